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
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from useg import normalize as norm
from useg.device import autocast, resolve_device, resolve_precision
from useg.errors import ConfigError, InputError
from useg.labels import most_likely_class
from useg.nets import (
    UNet,
    halo,
    min_input_shape,
    output_shape,
    pool_step,
    receptive_radius,
    valid_input_shape,
)
from useg.tiling import plan_tiles, predict_tiled
from useg.tta import transforms, with_tta

__all__ = ["default_tile", "make_predictor", "predict", "predict_file", "tile_dependence",
           "whole_image_tile"]


def tile_dependence(model: nn.Module) -> str | None:
    """Why a network's output would depend on the tile it sees, or None when it does not.

    A normalisation layer that uses the statistics of its own input when predicting (batch norm
    without running statistics, instance norm) normalises every tile by that tile's content, so
    overlap tiles would not stitch into the whole-image result.

    Examples
    --------
    >>> tile_dependence(UNet("cicek2016", width=2)) is None
    True
    >>> tile_dependence(UNet("cicek2016", width=2, batch_stats=True))
    'batch norm with the statistics of the batch'
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            return "batch norm with the statistics of the batch"
        if isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats:
            return "instance norm"
    return None


def whole_image_tile(model: UNet, image_shape: Sequence[int]) -> tuple[int, ...]:
    """The smallest valid input tile that predicts an image in one pass (one tile per axis).

    The tile covers the image and the mirrored context the overlap-tile plan reads around it.

    Examples
    --------
    >>> whole_image_tile(UNet("ronneberger2015"), (100, 300))
    (284, 492)
    """
    cfg = model.config
    want = [int(n) + 2 * c for n, c in zip(image_shape, _context(cfg), strict=True)]
    return valid_input_shape(cfg, want, mode="up")


def default_tile(
    model: UNet, image_shape: Sequence[int], device: torch.device | str = "cpu",
    budget_bytes: float | None = None,
) -> tuple[int, ...]:
    """The valid input tile that predicts an image with the least computation within a memory
    budget.

    Larger tiles waste less of a valid network's border and fewer of them overshoot the image's
    edge, but they cost memory. Every tile shape that changes the number of tiles along some
    axis is scored by the convolutions of all its tiles, counted from the configuration, and the
    cheapest whose peak activation memory (float32, modelled on the forward pass that
    :func:`predict` runs) fits the budget wins.

    The budget defaults, on CPU, to 1 GiB for 1D and 2D networks and to 4 GiB (at most a
    quarter of the machine's memory) for 3D ones, where the border costs far more: with 1 GiB
    the 2D U-Net predicts a 2048x2048 image with 1.13x the convolutions of one pass over the
    whole image (4 GiB: 1.07x), the 3D U-Net a 256^3 volume with 9.9x (4 GiB: 2.2x). On CUDA it
    is a quarter of the free memory.

    A network whose output depends on the tile (:func:`tile_dependence`) gets the tile of one
    pass over the whole image (:func:`whole_image_tile`), whatever the budget: a tile chosen
    from the memory of the machine would make its result depend on the machine.

    Examples
    --------
    >>> default_tile(UNet("ronneberger2015"), (2048, 2048))
    (1212, 1212)
    """
    cfg = model.config
    if tile_dependence(model) is not None:
        return whole_image_tile(model, image_shape)
    return _best_tile(cfg, image_shape, _budget(device, budget_bytes, cfg.ndim), itemsize=4)


def _budget(device: torch.device | str, budget_bytes: float | None, ndim: int) -> float:
    if budget_bytes is not None:
        return float(budget_bytes)
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 4
    if ndim < 3:
        return float(1 << 30)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        physical = 16 << 30
    return float(max(1 << 30, min(4 << 30, physical // 4)))


def _context(cfg) -> tuple[int, ...]:
    """Input context a tile needs on each side: the halo of a valid network, or for a same
    network the receptive radius rounded up to the pooling grid (its discarded margin)."""
    if cfg.padding == "valid":
        return halo(cfg)
    return tuple(
        -(-r // s) * s for r, s in zip(receptive_radius(cfg), pool_step(cfg), strict=True)
    )


def _margin(cfg, tile: Sequence[int]) -> tuple[int, ...]:
    """Output discarded per side of a tile: nothing for a valid network; for a same network its
    context, or, for a tile too small for that, what keeps at least one pooling step."""
    if cfg.padding == "valid":
        return (0,) * cfg.ndim
    return tuple(
        min(c, (t - s) // 2 // s * s)
        for c, t, s in zip(_context(cfg), tile, pool_step(cfg), strict=True)
    )


def _tiles_along(cfg, axis: int, size: int, length: int, halo_: int) -> float:
    """Number of tiles of ``size`` input pixels that cover ``length`` pixels along an axis
    (infinite for a size that keeps nothing)."""
    margin = _margin(cfg, (size,) * cfg.ndim)[axis]
    try:
        return plan_tiles((length,), size, halo_, margin, pool_step(cfg)[axis]).counts[0]
    except ConfigError:
        return math.inf


def _first(sizes: range, ok: Callable[[int], bool]) -> int:
    """Index of the first size for which ``ok`` holds, ``ok`` being monotone (False then True);
    ``len(sizes)`` when it never does."""
    lo, hi = 0, len(sizes)
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(sizes[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _axis_options(cfg, axis: int, length: int, budget: float, itemsize: int,
                  limit: int = 32) -> list[tuple[float, int]]:
    """(number of tiles, size) along one axis: for each of the ``limit`` fewest numbers of tiles
    that a size within the memory budget reaches, the smallest size that reaches it."""
    smallest, step, ctx = min_input_shape(cfg), pool_step(cfg)[axis], _context(cfg)
    h = halo(cfg)[axis]
    # Valid sizes form an arithmetic sequence; none is needed beyond one tile for the axis.
    beyond = max(0, length + 2 * ctx[axis] - smallest[axis])
    sizes = range(smallest[axis], smallest[axis] + -(-beyond // step) * step + 1, step)

    def too_big(size: int) -> bool:
        probe = list(smallest)
        probe[axis] = size
        return _peak_bytes(cfg, probe, itemsize) > budget

    top = _first(sizes, too_big) - 1  # memory only grows with the size
    if top < 0:
        return [(_tiles_along(cfg, axis, sizes[0], length, h), sizes[0])]
    # Same networks stitch exactly only when the margin covers the context: prefer such sizes.
    exact = _first(sizes, lambda t: _margin(cfg, (t,) * cfg.ndim)[axis] >= ctx[axis])
    sizes = sizes[: top + 1][exact if exact <= top else 0 :]
    options: dict[float, int] = {}
    fewest = _tiles_along(cfg, axis, sizes[-1], length, h)
    for count in range(int(min(fewest, 1 << 30)), int(min(fewest, 1 << 30)) + limit):
        i = _first(sizes, lambda t, c=count: _tiles_along(cfg, axis, t, length, h) <= c)
        if i < len(sizes):
            options.setdefault(_tiles_along(cfg, axis, sizes[i], length, h), sizes[i])
        if i == 0:
            break
    return sorted(options.items())


def _best_tile(cfg, image_shape: Sequence[int], budget: float, itemsize: int) -> tuple[int, ...]:
    """The tile of least total convolution work whose peak memory fits ``budget`` bytes."""
    smallest = min_input_shape(cfg)
    coeffs = np.array([c for c, _ in _mac_terms(cfg, smallest)], dtype=np.float64)
    sizes, counts, lengths = [], [], []
    for axis, n in enumerate(image_shape):
        options = _axis_options(cfg, axis, int(n), budget, itemsize)
        counts.append(np.array([c for c, _ in options], dtype=np.float64))
        sizes.append([t for _, t in options])
        # Each convolution's work is a product of per-axis lengths: tabulate them per option.
        probes = [[t if a == axis else smallest[a] for a in range(cfg.ndim)] for t in sizes[-1]]
        lengths.append(np.array([[s[axis] for _, s in _mac_terms(cfg, p)] for p in probes],
                                dtype=np.float64))
    work, tiles = coeffs, np.ones(())
    for axis in range(cfg.ndim):
        work = work[..., None, :] * lengths[axis].reshape((1,) * axis + lengths[axis].shape)
        tiles = tiles[..., None] * counts[axis]
    cost = work.sum(-1) * tiles
    for flat in np.argsort(cost, axis=None, kind="stable"):
        index = np.unravel_index(flat, cost.shape)
        tile = tuple(sizes[a][i] for a, i in enumerate(index))
        if _peak_bytes(cfg, tile, itemsize) <= budget:
            return tile
    return smallest


# ----------------------------------------------------------------------------------------------
# The inference forward pass, and the walk over its shapes that counts its work and memory.


def _memory_format(ndim: int) -> torch.memory_format:
    return {2: torch.channels_last, 3: torch.channels_last_3d}.get(ndim, torch.contiguous_format)


def _walk(cfg, tile: Sequence[int]) -> tuple[list, list]:
    """Spatial shapes of the forward pass for an input tile: per contracting level (input, after
    convolution 1, after convolution 2), per expanding level from the deepest (level, after the
    up-convolution, after convolution 1, after convolution 2)."""
    pools, kernels = cfg.pools(), cfg.kernels()
    shrink = cfg.padding == "valid"

    def conv(shape, level):
        return tuple(s - (k - 1) * shrink for s, k in zip(shape, kernels[level], strict=True))

    down, up = [], []
    shape = tuple(int(s) for s in tile)
    for level in range(cfg.depth + 1):
        if level:
            shape = tuple(s // p for s, p in zip(shape, pools[level - 1], strict=True))
        a = conv(shape, level)
        down.append((shape, a, conv(a, level)))
        shape = down[-1][2]
    for level in reversed(range(cfg.depth)):
        u = tuple(s * p for s, p in zip(shape, pools[level], strict=True))
        a = conv(u, level)
        up.append((level, u, a, conv(a, level)))
        shape = up[-1][3]
    return down, up


def _up_channels(cfg, c_in: int) -> int:
    return c_in if cfg.up_keep_channels else c_in // 2


def _mac_terms(cfg, tile: Sequence[int]) -> list[tuple[int, tuple[int, ...]]]:
    """(multiply-accumulates per output pixel, output shape) of every convolution of one tile,
    up-convolutions and the head included."""
    down, up = _walk(cfg, tile)
    taps = [math.prod(k) for k in cfg.kernels()]
    terms, c_in = [], cfg.in_channels
    for level, (_, a, b) in enumerate(down):
        mid, out = cfg.level_channels(level)
        terms += [(taps[level] * c_in * mid, a), (taps[level] * mid * out, b)]
        c_in = out
    for level, u, a, b in up:
        c_up, c_skip = _up_channels(cfg, c_in), cfg.level_channels(level)[1]
        # With the stride equal to the kernel, each output pixel of an up-convolution sees one tap.
        terms += [(c_in * c_up, u), (taps[level] * (c_up + c_skip) * c_skip, a),
                  (taps[level] * c_skip**2, b)]
        c_in = c_skip
    return [*terms, (c_in * cfg.classes, up[-1][3] if up else down[-1][2])]


def _conv_macs(cfg, tile: Sequence[int]) -> int:
    """Multiply-accumulates of all convolutions of one tile."""
    return sum(c * math.prod(shape) for c, shape in _mac_terms(cfg, tile))


def _peak_bytes(cfg, tile: Sequence[int], itemsize: int = 4) -> int:
    """Peak memory of the tensors that :func:`_forward` and the predictor hold for one tile.

    Replays the forward pass's allocations and releases: activations at ``itemsize`` bytes,
    the input (raw, normalised, on the device, and the next tile being read) and the softmax
    (logits copied to float32, probabilities) at four.
    """
    down, up = _walk(cfg, tile)
    n = math.prod
    # A normalisation layer writes a new tensor, unless it is a batch norm with running
    # statistics, which the predictor folds into the convolution before it.
    twice = 2 if cfg.norm == "instance" or (cfg.norm == "batch" and cfg.batch_stats) else 1
    valid = cfg.padding == "valid"
    skip_shapes = [u for _, u, _, _ in reversed(up)] if valid else [b for _, _, b in down[:-1]]
    peak = held = pooled = 0
    for level, (_, a, b) in enumerate(down):
        mid, out = cfg.level_channels(level)
        peak = max(peak, held + pooled + twice * mid * n(a), held + mid * n(a) + twice * out * n(b))
        if level < cfg.depth:
            pooled = out * n(down[level + 1][0])
            skip = out * n(skip_shapes[level])
            peak = max(peak, held + out * n(b) + pooled + skip * valid)
            held += skip
    c_in, x = out, out * n(down[-1][2])
    for level, u, a, b in up:
        c_up, c_skip = _up_channels(cfg, c_in), cfg.level_channels(level)[1]
        buf = (c_up + c_skip) * n(u)
        held -= c_skip * n(skip_shapes[level])
        peak = max(
            peak,
            held + c_skip * n(skip_shapes[level]) + x + buf,
            held + x + buf + c_up * n(u),
            held + buf + twice * c_skip * n(a),
            held + c_skip * n(a) + twice * c_skip * n(b),
        )
        c_in, x = c_skip, c_skip * n(b)
    classes = cfg.classes * n(up[-1][3] if up else down[-1][2])
    peak = max(peak, x + classes) * itemsize
    return max(peak, classes * (itemsize + 8)) + 4 * 4 * cfg.in_channels * n(tile)


def _inference_layers(model: UNet) -> tuple[list[list], list[list]]:
    """The layers of every convolution block of the contracting and expanding paths, with each
    batch normalisation that uses running statistics (in eval mode) folded into the convolution
    before it: one pass over the activations less per layer and, under bf16 autocast, no casts
    to float32 and back (batch norm runs in float32). Identity layers are dropped."""
    fmt = _memory_format(model.config.ndim)

    def fold(block) -> list:
        layers: list = []
        for layer in block:
            prev = layers[-1] if layers else None
            if (isinstance(layer, nn.modules.batchnorm._BatchNorm) and not layer.training
                    and layer.running_mean is not None
                    and isinstance(prev, nn.modules.conv._ConvNd) and not prev.training):
                layers[-1] = fuse_conv_bn_eval(prev, layer).to(memory_format=fmt)
            elif not isinstance(layer, nn.Identity):
                layers.append(layer)
        return layers

    return ([fold(model.inc), *(fold(d.conv) for d in model.downs)],
            [fold(u.conv) for u in model.ups])


def _forward(model: UNet, x: torch.Tensor, layers: tuple | None = None) -> torch.Tensor:
    """``model(x)`` with the same operations but fewer activations alive at once.

    Each skip connection is cropped to what the expanding path uses as soon as it has been
    pooled, every tensor is released once consumed, and each concatenation is written in place,
    skip first, so that the skip is gone before the up-convolution runs. For the 2D U-Net's
    1,212 tile this lowers the peak from 1.8 to 1.0 GB. ``layers`` are the blocks' layers from
    :func:`_inference_layers` (the model's own when omitted).
    """
    cfg = model.config
    fmt = _memory_format(cfg.ndim)
    if layers is None:
        layers = ([model.inc, *(d.conv for d in model.downs)], [u.conv for u in model.ups])
    _, up = _walk(cfg, x.shape[2:])
    skips = []
    for level, block in enumerate(layers[0]):
        for layer in block:
            x = layer(x)
        if level == cfg.depth:
            break
        # Max pooling is exact in any precision, but autocast would run the 3D one in float32
        # (two casts of the largest activations of the network).
        with torch.autocast(x.device.type, enabled=False):
            pooled = model.downs[level].pool(x)
        want = up[cfg.depth - 1 - level][1]
        if tuple(x.shape[2:]) != want:
            box = tuple(
                slice((have - w) // 2, (have - w) // 2 + w)
                for have, w in zip(x.shape[2:], want, strict=True)
            )
            x = x[(slice(None), slice(None), *box)].contiguous(memory_format=fmt)
        skips.append(x)
        x = pooled
        del pooled
    x = model.dropout(x)
    for stage, block in zip(model.ups, layers[1], strict=True):
        skip = skips.pop()
        c_skip = skip.shape[1]
        cat = torch.empty(
            (skip.shape[0], c_skip + stage.up.out_channels, *skip.shape[2:]),
            dtype=skip.dtype, device=skip.device, memory_format=fmt,
        )
        cat[:, :c_skip] = skip
        del skip
        cat[:, c_skip:] = stage.up(x)
        x = cat
        del cat
        for layer in block:
            x = layer(x)
    return model.head(x)


def make_predictor(
    model: UNet,
    stats: dict[str, Any],
    *,
    device: torch.device,
    precision: str = "auto",
    tta: bool = False,
) -> Callable[[np.ndarray], np.ndarray]:
    """A NumPy-in, NumPy-out tile predictor returning softmax probabilities.

    A :class:`UNet` runs through :func:`_forward` (fewer activations alive at once), with each
    batch norm that uses running statistics folded into its convolution; the folded
    convolutions are copies made here, so make a new predictor after the weights change.
    ``precision`` is resolved as by :func:`useg.device.resolve_precision`.
    """
    precision = resolve_precision(precision, device)
    ndim = model.config.ndim
    memory_format = _memory_format(ndim)
    forward = model
    if isinstance(model, UNet):
        layers = _inference_layers(model)
        forward = lambda x: _forward(model, x, layers)  # noqa: E731

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=memory_format)
        with autocast(device, precision):
            logits = forward(x)
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
        A network, e.g. from :func:`useg.load_model`.
    image : array-like
        ``(C, *spatial)`` (a channel-less array is accepted for one-channel models). Any
        array-like with slicing works (NumPy, memmap, zarr); it is read tile by tile.
    tile : int or tuple, optional
        Input tile; rounded up to the nearest valid size. Chosen from a memory budget when omitted
        (:func:`default_tile`). A network whose output depends on the tile
        (:func:`tile_dependence`) predicts in one pass over the whole image; a tile that does not
        cover it raises :class:`~useg.errors.ConfigError`.
    device : str
        ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast precision of the network. ``auto`` (default) is the faster of fp32 and bf16
        that the device runs natively, never slower than fp32 (see
        :func:`useg.device.resolve_precision`); bf16 on a CPU without bf16 instructions is
        emulated, much slower, and warns (``bench/results/precision.json``).
    tta : bool
        Average over flips and quarter turns (8 in 2D, 16 in 3D: see :mod:`useg.tta`).
    out : array-like, optional
        Preallocated ``(classes, *spatial)`` float32 output (e.g. a memmap for huge images).
    stats : dict, optional
        Normalisation offsets and scales (:func:`useg.normalize.image_stats`); computed from the
        image when omitted.
    region : tuple of slice, optional
        Predict only this box, cut on the tile grid (see :func:`useg.tiling.predict_tiled`); the
        result equals the same box of the whole-image result.

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
    image = _as_image(model, image)
    cfg = model.config
    model = model.to(device).eval()
    memory_format = {2: torch.channels_last, 3: torch.channels_last_3d}.get(cfg.ndim)
    if memory_format is not None:
        model = model.to(memory_format=memory_format)
    if stats is None:
        meta = getattr(model, "meta", {}) or {}
        stats = norm.image_stats(image, meta.get("normalization"))
    tile, h, margin, step = _geometry(model, image.shape[1:], tile, device, tta)
    predictor = make_predictor(model, stats, device=device, precision=precision, tta=tta)
    return predict_tiled(
        predictor, image, tile=tile, out_channels=cfg.classes, halo=h, margin=margin,
        step=step, batch_size=batch_size, out=out, progress=progress, region=region,
    )


def _geometry(
    model: UNet, image_shape: Sequence[int], tile: Sequence[int] | int | None,
    device: torch.device, tta: bool,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...] | int, tuple[int, ...]]:
    """Tile, halo, margin and pooling step that :func:`predict` uses for an image shape."""
    cfg = model.config
    if tile is None:
        tile = default_tile(model, image_shape, device)
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
    _check_one_pass(model, image_shape, tile, h, margin, device)
    return tile, h, margin, pool_step(cfg)


def _check_one_pass(
    model: UNet, image_shape: Sequence[int], tile: tuple[int, ...], h: tuple[int, ...],
    margin: tuple[int, ...] | int, device: torch.device,
) -> None:
    """Refuse to tile a network whose output depends on the tile (one pass only), and a pass
    that cannot fit in the memory of the device."""
    reason = tile_dependence(model)
    if reason is None:
        return
    cfg = model.config
    path = getattr(model, "path", None)
    name = f"model {path}" if path is not None else "this model"
    whole = whole_image_tile(model, image_shape)
    try:
        counts = plan_tiles(image_shape, tile, h, margin, pool_step(cfg)).counts
    except ConfigError:
        counts = (2,)
    if any(c > 1 for c in counts):
        raise ConfigError(
            f"{name} normalises with the statistics of its input ({reason}), so tiles of "
            f"{tile} would give a result that depends on the tile; it predicts only in one pass "
            f"over the whole image, with a tile of at least {whole}: predict without a tile, "
            "or retrain with running statistics (useg train --running-stats) to predict in tiles"
        )
    need = _peak_bytes(cfg, tile, itemsize=4)
    have = _device_memory(device)
    if need > have:
        raise ConfigError(
            f"{name} normalises with the statistics of its input ({reason}) and predicts only in "
            f"one pass over the whole image, which needs about {need / 2**30:.1f} GiB, more "
            f"than the {have / 2**30:.1f} GiB of {device}; predict a smaller image, or retrain "
            "with running statistics (useg train --running-stats) to predict in tiles"
        )


def _device_memory(device: torch.device) -> float:
    """Memory a single forward pass could use at most: free GPU memory, or the machine's."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not a POSIX system: do not guess
        return math.inf


def _labels_from_probabilities(probs: Any, out: Any, slab: int = 64) -> None:
    """Argmax over classes, slab by slab along the first spatial axis to bound memory."""
    for lo in range(0, probs.shape[1], slab):
        out[lo : lo + slab] = most_likely_class(np.asarray(probs[:, lo : lo + slab]), out.dtype)


def predict_file(
    model: UNet,
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    write_probabilities: bool = True,
    write_labels: bool = True,
    name: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, Path]:
    """Predict one image file and write ``<stem>_probs.tif`` and ``<stem>_labels.tif``.

    A 2D model applied to a 3D stack predicts slice by slice. Outputs are written to temporary
    files and renamed when complete, so an interrupted run leaves no half-written file. ``name``
    is the file's path relative to the folder it was listed from (default: its file name); its
    sub-folders are kept under ``out_dir`` (:func:`useg.io.result_paths`, which
    :func:`useg.io.plan_results` checks for collisions before a run).
    """
    from useg import io

    path = Path(path)
    targets = io.result_paths(out_dir, path.name if name is None else name,
                              probabilities=write_probabilities, labels=write_labels)
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
    for target in targets.values():
        target.parent.mkdir(parents=True, exist_ok=True)
    if write_probabilities:
        target = targets["probabilities"]
        axes = "C" + "ZYX"[3 - (probs.ndim - 1):]
        io.write_image(target, probs.astype(np.float32, copy=False), spacing=spacing, axes=axes)
        written["probabilities"] = target
    if write_labels:
        dtype = np.uint8 if cfg.classes <= 255 else np.uint16
        labels = np.empty(probs.shape[1:], dtype=dtype)
        _labels_from_probabilities(probs, labels)
        target = targets["labels"]
        io.write_image(target, labels, spacing=spacing, axes="ZYX"[3 - labels.ndim:])
        written["labels"] = target
    return written
