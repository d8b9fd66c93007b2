"""Prediction with a U-Net: normalisation, overlap tiles, test-time augmentation.

``predict(model, image)`` is the Python entry point (:mod:`useg.inference.files` predicts files
with it). It does not need to know how the model was trained: the model file's header says how
to normalise inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from useg.device import autocast, freed_memory_kept, resolve_device, resolve_precision
from useg.errors import InputError, ModelFileError, UsegWarning
from useg.inference.tile_choice import keeps_freed_memory, tile_geometry
from useg.inference.tiling import predict_tiled
from useg.inference.tta import transforms, turns_commute, unseen_by_training, with_tta
from useg.io import normalize as norm
from useg.nets.checkpoint import model_name
from useg.nets.forward import inference_forward, inference_layers, memory_format
from useg.nets.geometry import pool_step
from useg.nets.unet import UNet

__all__ = ["check_image", "check_real", "check_spatial_axes", "make_predictor", "predict"]


def _note_unseen_transforms(model: UNet) -> None:
    """One warning when test-time augmentation shows the network copies it never trained on."""
    why = unseen_by_training(getattr(model, "meta", None))
    if why is not None:
        warnings.warn(UsegWarning(
            "test-time augmentation averages predictions over flipped and turned copies of the "
            f"image, but {model_name(model)} {why}: those copies are new to it, and the average "
            "can be worse than one plain prediction; predict without TTA, or train with "
            "augmentation"),
            stacklevel=3)


def make_predictor(
    model: UNet,
    stats: dict[str, Any],
    *,
    device: torch.device,
    precision: str = "auto",
    tta: bool = False,
) -> Callable[[np.ndarray], np.ndarray]:
    """A NumPy-in, NumPy-out tile predictor returning softmax probabilities.

    A :class:`UNet` runs through :func:`useg.nets.forward.inference_forward` (fewer activations
    alive at once), with each batch norm that uses running statistics folded into its
    convolution; the folded convolutions are copies made here, so make a new predictor after
    the weights change.
    ``precision`` is resolved as by :func:`useg.device.resolve_precision`.
    """
    precision = resolve_precision(precision, device)
    ndim = model.config.ndim
    fmt = memory_format(ndim)
    forward = model
    if isinstance(model, UNet):
        layers = inference_layers(model)
        forward = lambda x: inference_forward(model, x, layers)  # noqa: E731

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=fmt)
        with autocast(device, precision):
            logits = forward(x)
        return torch.softmax(logits.float(), dim=1)

    ts = None
    if tta:
        # Quarter turns need square tiles in the (Y, X) plane (the tiler always uses one
        # shape) and a network that treats Y and X alike.
        ts = transforms(ndim, rotations=turns_commute(model.config))
    run = with_tta(probabilities, ts) if ts else probabilities

    def predictor(x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            normalized = norm.normalize(x, stats, channel_axis=1)
        if not np.isfinite(normalized).all():
            if np.isfinite(x).all():
                # A finite image made infinite by the model's own (fixed) normalisation.
                raise ModelFileError("the model's normalization (offset, scale) takes this "
                                     "image beyond float32's range; the model file's "
                                     "normalization is unusable")
            raise InputError("image contains NaN or infinite values")
        x = normalized
        t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        with torch.inference_mode():
            out = run(t)
            # A finite input can still overflow in the network (weights far too large): never
            # hand back NaN probabilities as a result.
            if not bool(torch.isfinite(out).all()):
                raise ModelFileError(
                    f"the network's output is not finite (NaN or infinity) in {precision}: its "
                    "weights overflow on this image; the model file is unusable")
            return out.cpu().numpy()

    return predictor


def check_real(image: Any, what: str = "image") -> None:
    """Refuse complex values: cast to float, their imaginary part would be dropped with a
    NumPy warning only."""
    if np.dtype(image.dtype).kind == "c":
        raise InputError(f"{what} holds complex values ({image.dtype}); useg segments real "
                         "intensities")


def check_spatial_axes(model_ndim: int, spatial_shape: Sequence[int], *,
                       slice_by_slice: bool = False) -> None:
    """Refuse an image read channels first whose spatial axes are 2D for a 3D model or 3D for a
    2D model: handed over as an array, a 2D image's channels would pass for Z slices. A 3D
    stack for a 2D model passes when it is predicted ``slice_by_slice``; other shapes are
    left to :func:`check_image`."""
    spatial = tuple(int(s) for s in spatial_shape)
    if model_ndim == 3 and len(spatial) == 2:
        raise InputError(f"a 2D image of shape {spatial} for a 3D model, which needs a 3D stack "
                         "(Z, Y, X)")
    if model_ndim == 2 and len(spatial) == 3 and not slice_by_slice:
        raise InputError(f"a 3D stack of shape {spatial} for a 2D model; prediction block by "
                         "block takes 2D images (useg predict without --dask predicts a stack "
                         "slice by slice)")


def check_image(model: UNet, image: Any) -> Any:
    """``image`` as the ``(C, *spatial)`` input of ``model`` (a channel axis is added for a
    one-channel model), or :class:`~useg.errors.InputError` saying why it cannot be one."""
    cfg = model.config
    check_real(image)
    if image.ndim == cfg.ndim and cfg.in_channels == 1:
        image = image[None]
    if image.ndim != cfg.ndim + 1:
        raise InputError(
            f"expected an image of shape (C, {'Z, ' if cfg.ndim == 3 else ''}Y, X) with "
            f"{cfg.ndim} spatial axes for this {cfg.ndim}D model, got shape {tuple(image.shape)}"
        )
    if image.shape[0] != cfg.in_channels:
        raise InputError(
            f"image has {image.shape[0]} channel(s) but the model expects {cfg.in_channels}"
        )
    if any(s == 0 for s in image.shape):
        raise InputError(f"image is empty (shape {tuple(image.shape)})")
    minimum = pool_step(cfg)
    if any(s < m for s, m in zip(image.shape[1:], minimum, strict=True)):
        raise InputError(
            f"image of spatial shape {tuple(image.shape[1:])} is smaller than the network's "
            f"minimum {minimum} (its coarsest level would see less than one pixel)"
        )
    return image


def predict(
    model: UNet,
    image: Any,
    *,
    tile: Sequence[int] | int | None = None,
    memory_gib: float | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    tta: bool = False,
    batch_size: int = 1,
    out: Any = None,
    progress: bool | Callable[[int, int], None] = False,
    stats: dict[str, Any] | None = None,
    region: Sequence[slice] | None = None,
) -> Any:
    """Class probabilities of an image of any size, by seamless overlap-tile prediction.

    Parameters
    ----------
    model : UNet
        A network, e.g. from :func:`useg.nets.checkpoint.load_model`.
    image : array-like
        ``(C, *spatial)`` (a channel-less array is accepted for one-channel models). Any
        array-like with slicing works (NumPy, memmap, zarr); it is read tile by tile.
    tile : int or tuple, optional
        Input tile; rounded up to the nearest valid size. Chosen from a memory budget when omitted
        (:func:`useg.inference.tile_choice.default_tile`). A network whose output depends on the
        tile (:func:`~useg.inference.tile_choice.tile_dependence`) predicts in one pass over the
        whole image; a tile that does not cover it raises :class:`~useg.errors.ConfigError`.
    memory_gib : float, optional
        Memory for the activations of one forward pass, in GiB (2**30 bytes), from which the
        tile is chosen instead of ``tile``: more memory, larger tiles, less context computed
        again at every tile edge (faster). Default: 1 GiB for 1D and 2D networks, 4 GiB for 3D
        ones (at most a quarter of the machine's memory), a quarter of the free memory of a
        GPU. Shared by the ``batch_size`` tiles of a pass; a budget too small for any tile
        raises :class:`~useg.errors.ConfigError`. Without a tile or budget, a 3D prediction on
        the CPU may keep freed memory between tiles instead, with tiles for half the default
        budget (:func:`~useg.inference.tile_choice.keeps_freed_memory`; about the same peak
        memory; ``USEG_KEEP_FREED_MEMORY=0`` turns it off).
    device : str
        ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast precision of the network. ``auto`` (default) is the faster of fp32 and bf16
        that the device runs natively, never slower than fp32 (see
        :func:`useg.device.resolve_precision`); bf16 on a CPU without bf16 instructions is
        emulated, much slower, and warns (``bench/results/precision.json``).
    tta : bool
        Average over flips and quarter turns (8 in 2D, 16 in 3D: see :mod:`useg.inference.tta`).
    out : array-like, optional
        Preallocated ``(classes, *spatial)`` float32 output (e.g. a memmap for huge images).
    stats : dict, optional
        Normalisation offsets and scales (:func:`useg.io.normalize.image_stats`); computed from the
        image when omitted.
    region : tuple of slice, optional
        Predict only this box, cut on the tile grid (see
        :func:`useg.inference.tiling.predict_tiled`); the result equals the same box of the
        whole-image result.

    Returns
    -------
    ``(classes, *spatial)`` float32 probabilities (``(classes, *box)`` with ``region``).

    Examples
    --------
    >>> net = UNet("ronneberger2015", width=4, depth=2)
    >>> probs = predict(net, np.random.default_rng(0).random((100, 80)), device="cpu")
    >>> probs.shape
    (2, 100, 80)
    """
    device = resolve_device(device)
    image = check_image(model, image)
    cfg = model.config
    model = model.to(device).eval()
    model = model.to(memory_format=memory_format(cfg.ndim))
    if stats is None:
        meta = getattr(model, "meta", {}) or {}
        stats = norm.image_stats(image, meta.get("normalization"))
    keep = keeps_freed_memory(model, image.shape[1:], device, tta, tile, memory_gib, batch_size)
    with freed_memory_kept(keep) as kept:
        tile, h, margin, step = tile_geometry(model, image.shape[1:], tile, device, tta,
                                              memory_gib=memory_gib, batch_size=batch_size,
                                              freed_kept=kept)
        if tta:
            _note_unseen_transforms(model)
        predictor = make_predictor(model, stats, device=device, precision=precision, tta=tta)
        return predict_tiled(
            predictor, image, tile=tile, out_channels=cfg.classes, halo=h, margin=margin,
            step=step, batch_size=batch_size, out=out, progress=progress, region=region,
        )
