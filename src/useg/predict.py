"""Prediction with a U-Net: normalisation, overlap tiles, test-time augmentation, files.

``predict(model, image)`` is the Python entry point; ``predict_file`` is the engine of
``useg predict``. Neither knows how the model was trained: the model file's header says how to
normalise inputs and what the classes mean.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from useg import normalize as norm
from useg.device import autocast, resolve_device
from useg.errors import InputError
from useg.nets import UNet, halo, output_shape, pool_step, receptive_radius, valid_input_shape
from useg.tiling import predict_tiled
from useg.tta import transforms, with_tta

__all__ = ["default_tile", "make_predictor", "predict", "predict_file"]


def default_tile(
    model: UNet, image_shape: Sequence[int], device: torch.device | str = "cpu",
    budget_bytes: float | None = None,
) -> tuple[int, ...]:
    """A valid input tile that fits a memory budget and is no larger than the image needs.

    Larger tiles waste less of the valid network's border (the 572 tile computes 2.2x its output
    area, a 1,084 tile 1.4x) but cost memory; the budget defaults to 1 GiB on CPU and a quarter
    of the free memory on CUDA.
    """
    cfg = model.config
    device = torch.device(device)
    if budget_bytes is None:
        budget_bytes = 1 << 30
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = free / 4
    # Peak activation memory is dominated by the first level: input, two convolutions and the
    # skip kept for the expanding path, at four bytes each (inference keeps no gradients).
    c0, c1 = cfg.level_channels(0)
    per_pixel = 4 * (cfg.in_channels + c0 + 2 * c1 + cfg.classes) * 1.5
    h = _context(cfg)
    # No axis needs more than the image plus its context.
    cap = [n + 2 * hh for n, hh in zip(image_shape, h, strict=True)]
    tile = [min(c, 4096 if cfg.ndim == 1 else 2048 if cfg.ndim == 2 else 512) for c in cap]
    tile = list(valid_input_shape(cfg, tile, mode="up"))
    steps = pool_step(cfg)
    while math.prod(tile) * per_pixel > budget_bytes:
        axis = int(np.argmax(tile))
        smaller = valid_input_shape(cfg, [t - steps[a] if a == axis else t
                                          for a, t in enumerate(tile)], mode="down")
        if smaller == tuple(tile):
            break
        tile = list(smaller)
    return tuple(tile)


def _context(cfg) -> tuple[int, ...]:
    """Input context a tile needs on each side: the halo of a valid network, or for a same
    network the receptive radius rounded up to the pooling grid (its discarded margin)."""
    if cfg.padding == "valid":
        return halo(cfg)
    return tuple(
        -(-r // s) * s for r, s in zip(receptive_radius(cfg), pool_step(cfg), strict=True)
    )


def make_predictor(
    model: UNet,
    stats: dict[str, Any],
    *,
    device: torch.device,
    precision: str = "fp32",
    tta: bool = False,
) -> Callable[[np.ndarray], np.ndarray]:
    """A NumPy-in, NumPy-out tile predictor returning softmax probabilities."""
    ndim = model.config.ndim
    memory_format = {2: torch.channels_last, 3: torch.channels_last_3d}.get(ndim)

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        with autocast(device, precision):
            logits = model(x)
        return torch.softmax(logits.float(), dim=1)

    ts = None
    if tta:
        # Quarter turns need square tiles in the (Y, X) plane; the tiler always uses one shape.
        ts = transforms(ndim, rotations=ndim >= 2)
    run = with_tta(probabilities, ts) if ts else probabilities

    def predictor(x: np.ndarray) -> np.ndarray:
        x = norm.normalize(x, stats, channel_axis=1)
        if not np.isfinite(x).all():
            raise InputError("image contains NaN or infinite values")
        t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        with torch.inference_mode():
            return run(t).cpu().numpy()

    return predictor


def _as_image(model: UNet, image: Any) -> Any:
    cfg = model.config
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
    device: str | torch.device = "auto",
    precision: str = "fp32",
    tta: bool = False,
    batch_size: int = 1,
    out: Any = None,
    progress: bool | Callable[[int, int], None] = False,
) -> Any:
    """Class probabilities of an image of any size, by seamless overlap-tile prediction.

    Parameters
    ----------
    model : UNet
        A network, e.g. from :func:`useg.load_model`.
    image : array-like
        ``(C, *spatial)`` (a channel-less array is accepted for one-channel models). Any
        array-like with slicing works (NumPy, memmap, zarr); it is read tile by tile.
    tile : int or tuple, optional
        Input tile; rounded up to the nearest valid size. Chosen from a memory budget when omitted.
    device : str
        ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
    precision : {"fp32", "bf16", "fp16"}
        Autocast precision of the network (bf16 is about 2.5x faster on recent CPUs).
    tta : bool
        Average over flips and quarter turns (8 in 2D, 32 in 3D).
    out : array-like, optional
        Preallocated ``(classes, *spatial)`` float32 output (e.g. a memmap for huge images).

    Returns
    -------
    ``(classes, *spatial)`` float32 probabilities.

    Examples
    --------
    >>> net = UNet("ronneberger2015", width=4, depth=2)
    >>> probs = predict(net, np.random.default_rng(0).random((100, 80)), device="cpu")
    >>> probs.shape
    (2, 100, 80)
    """
    device = resolve_device(device)
    image = _as_image(model, image)
    cfg = model.config
    model = model.to(device).eval()
    memory_format = {2: torch.channels_last, 3: torch.channels_last_3d}.get(cfg.ndim)
    if memory_format is not None:
        model = model.to(memory_format=memory_format)
    meta = getattr(model, "meta", {}) or {}
    stats = norm.image_stats(image, meta.get("normalization"))
    if tile is None:
        tile = default_tile(model, image.shape[1:], device)
    tile = valid_input_shape(cfg, tile, mode="up")
    if tta and cfg.ndim >= 2 and tile[-1] != tile[-2]:
        side = max(tile[-2:])
        tile = valid_input_shape(cfg, (*tile[:-2], side, side), mode="up")
    h = halo(cfg)
    margin = 0
    if cfg.padding == "same":
        # Output within the receptive radius of a tile edge sees the tile's zero padding:
        # discard it, so stitching is exact; a tile too small for that keeps one pooling step.
        steps = pool_step(cfg)
        margin = tuple(
            min(c, (t - s) // 2 // s * s)
            for c, t, s in zip(_context(cfg), tile, steps, strict=True)
        )
    output_shape(cfg, tile)  # validates the tile
    predictor = make_predictor(model, stats, device=device, precision=precision, tta=tta)
    return predict_tiled(
        predictor, image, tile=tile, out_channels=cfg.classes, halo=h, margin=margin,
        step=pool_step(cfg), batch_size=batch_size, out=out, progress=progress,
    )


def _labels_from_probabilities(probs: Any, out: Any, slab: int = 64) -> None:
    """Argmax over classes, slab by slab along the first spatial axis to bound memory."""
    for lo in range(0, probs.shape[1], slab):
        out[lo : lo + slab] = np.argmax(np.asarray(probs[:, lo : lo + slab]), axis=0)


def predict_file(
    model: UNet,
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    write_probabilities: bool = True,
    write_labels: bool = True,
    **kwargs: Any,
) -> dict[str, Path]:
    """Predict one image file and write ``<stem>_probs.tif`` and ``<stem>_labels.tif``.

    A 2D model applied to a 3D stack predicts slice by slice. Outputs are written to temporary
    files and renamed when complete, so an interrupted run leaves no half-written file.
    """
    from useg import io

    path = Path(path)
    out_dir = Path(out_dir)
    image, meta = io.read_image(path)
    cfg = model.config
    stack = cfg.ndim == 2 and image.ndim == 4
    try:
        if stack:
            slices = [predict(model, image[:, z], **kwargs) for z in range(image.shape[1])]
            probs = np.stack(slices, axis=1)
        else:
            probs = predict(model, image, **kwargs)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    spacing = meta.get("spacing")
    written: dict[str, Path] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    if write_probabilities:
        target = out_dir / f"{path.stem}_probs.tif"
        axes = "C" + "ZYX"[3 - (probs.ndim - 1):]
        io.write_image(target, probs.astype(np.float32, copy=False), spacing=spacing, axes=axes)
        written["probabilities"] = target
    if write_labels:
        dtype = np.uint8 if cfg.classes <= 255 else np.uint16
        labels = np.empty(probs.shape[1:], dtype=dtype)
        _labels_from_probabilities(probs, labels)
        target = out_dir / f"{path.stem}_labels.tif"
        io.write_image(target, labels, spacing=spacing, axes="ZYX"[3 - labels.ndim:])
        written["labels"] = target
    return written
