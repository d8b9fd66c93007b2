"""Shape algebra of a U-Net, and the cost model of its forward pass: pure arithmetic on the
configuration, no forward pass needed.

- Shapes: :func:`output_shape`, :func:`valid_input_shape`, :func:`min_input_shape`,
  :func:`halo`, :func:`pool_step`, :func:`receptive_radius`, and :func:`anisotropic_pools`
  (pooling factors for anisotropic voxels).
- Tiles: :func:`tile_context` (input context a tile needs per side) and :func:`tile_margin`
  (output a tile discards per side).
- Cost: :func:`forward_shapes` walks the shapes of the forward pass, from which
  :func:`mac_terms` / :func:`conv_macs` count the work of one tile and :func:`peak_bytes` its
  peak memory (modelled on :func:`useg.nets.forward.inference_forward`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from useg.errors import ConfigError
from useg.nets.config import UNetConfig

__all__ = [
    "anisotropic_pools",
    "conv_macs",
    "forward_shapes",
    "halo",
    "is_valid_input",
    "mac_terms",
    "min_input_shape",
    "output_shape",
    "peak_bytes",
    "pool_step",
    "receptive_radius",
    "tile_context",
    "tile_margin",
    "training_step_bytes",
    "up_channels",
    "valid_input_shape",
]

def _axis_output(cfg: UNetConfig, n: int, axis: int) -> int | None:
    """Output length along an axis for input length ``n``; None when a pooling sees an odd size."""
    pools = [p[axis] for p in cfg.pools()]
    shrink = [0] * (cfg.depth + 1)
    if cfg.padding == "valid":
        shrink = [2 * (k[axis] - 1) for k in cfg.kernels()]
    for level in range(cfg.depth):
        n -= shrink[level]
        if n < 1 or n % pools[level]:
            return None
        n //= pools[level]
    n -= shrink[cfg.depth]
    if n < 1:
        return None
    for level in reversed(range(cfg.depth)):
        n = n * pools[level] - shrink[level]
        if n < 1:
            return None
    return n


def _as_shape(cfg: UNetConfig, shape: Sequence[int] | int) -> tuple[int, ...]:
    if isinstance(shape, int):
        return (shape,) * cfg.ndim
    shape = tuple(int(s) for s in shape)
    if len(shape) != cfg.ndim:
        raise ConfigError(f"expected a {cfg.ndim}-D spatial shape, got {shape}")
    return shape


def is_valid_input(cfg: UNetConfig, shape: Sequence[int] | int) -> bool:
    """True when every pooling of the network sees an even (divisible) size for this input.

    Examples
    --------
    >>> from useg.nets.config import preset
    >>> cfg = preset("ronneberger2015")
    >>> is_valid_input(cfg, 572), is_valid_input(cfg, 570)
    (True, False)
    """
    shape = _as_shape(cfg, shape)
    return all(_axis_output(cfg, n, a) is not None for a, n in enumerate(shape))


def output_shape(cfg: UNetConfig, shape: Sequence[int] | int) -> tuple[int, ...]:
    """Spatial output shape of the network for a spatial input shape.

    Raises :class:`~useg.errors.ConfigError` when the input is not valid (see
    :func:`valid_input_shape`).

    Examples
    --------
    >>> from useg.nets.config import preset
    >>> output_shape(preset("cicek2016", in_channels=3), (116, 132, 132))
    (28, 44, 44)
    """
    shape = _as_shape(cfg, shape)
    out = tuple(_axis_output(cfg, n, a) for a, n in enumerate(shape))
    if any(o is None for o in out):
        suggestion = valid_input_shape(cfg, shape)
        raise ConfigError(
            f"input shape {shape} is not valid for this network (a pooling would see an odd size "
            f"or a size below 1); nearest valid shape is {suggestion}"
        )
    return out  # type: ignore[return-value]


def _axis_input_for_bottom(cfg: UNetConfig, m: int, axis: int) -> int:
    """Input length whose bottom level (after its convolutions) has length ``m``."""
    pools = [p[axis] for p in cfg.pools()]
    shrink = [0] * (cfg.depth + 1)
    if cfg.padding == "valid":
        shrink = [2 * (k[axis] - 1) for k in cfg.kernels()]
    n = m + shrink[cfg.depth]
    for level in reversed(range(cfg.depth)):
        n = n * pools[level] + shrink[level]
    return n


def _axis_valid_inputs(cfg: UNetConfig, axis: int, upto: int) -> list[int]:
    """Valid input lengths along an axis, increasing, from a few below ``upto`` (all of them
    when ``upto`` is small) to the first at or beyond it."""
    sizes: list[int] = []
    # The input length is affine in the bottom length m, so the scan starts a few valid sizes
    # below ``upto`` rather than at 1: a huge request costs no more than a small one.
    base = _axis_input_for_bottom(cfg, 0, axis)
    step = _axis_input_for_bottom(cfg, 1, axis) - base
    m = max(1, (int(upto) - base) // step - 8)
    while True:
        n = _axis_input_for_bottom(cfg, m, axis)
        if _axis_output(cfg, n, axis) is not None:
            sizes.append(n)
            if n >= upto:
                return sizes
        m += 1


def valid_input_shape(
    cfg: UNetConfig, shape: Sequence[int] | int, mode: str = "nearest"
) -> tuple[int, ...]:
    """Nearest valid input shape to a requested one.

    Parameters
    ----------
    mode : {"nearest", "down", "up"}
        ``down`` never exceeds the request (except below the minimum valid size), ``up`` never
        falls below it.

    Examples
    --------
    >>> from useg.nets.config import preset
    >>> cfg = preset("ronneberger2015")
    >>> valid_input_shape(cfg, 1000), valid_input_shape(cfg, 1000, mode="up")
    ((1004, 1004), (1004, 1004))
    >>> valid_input_shape(cfg, 1000, mode="down")
    (988, 988)
    """
    if mode not in ("nearest", "down", "up"):
        raise ConfigError(f"mode must be 'nearest', 'down' or 'up', got {mode!r}")
    shape = _as_shape(cfg, shape)
    result = []
    for axis, n in enumerate(shape):
        sizes = _axis_valid_inputs(cfg, axis, n)
        above = sizes[-1]
        below = [s for s in sizes if s <= n]
        if mode == "up" or not below:
            result.append(above)
        elif mode == "down":
            result.append(below[-1])
        else:
            b = below[-1]
            result.append(b if n - b <= above - n else above)
    return tuple(result)


def min_input_shape(cfg: UNetConfig) -> tuple[int, ...]:
    """Smallest valid input shape.

    Examples
    --------
    >>> from useg.nets.config import preset
    >>> min_input_shape(preset("ronneberger2015"))
    (188, 188)
    """
    return tuple(_axis_valid_inputs(cfg, a, 1)[0] for a in range(cfg.ndim))


def halo(cfg: UNetConfig) -> tuple[int, ...]:
    """Border lost on each side of the input, per axis (0 for same-padding networks).

    For a valid-padding network ``output = input - 2 * halo`` for every valid input.

    Examples
    --------
    >>> from useg.nets.config import preset
    >>> halo(preset("ronneberger2015"))
    (92, 92)
    >>> halo(preset("cicek2016"))
    (44, 44, 44)
    """
    n = min_input_shape(cfg)
    out = output_shape(cfg, n)
    return tuple((i - o) // 2 for i, o in zip(n, out, strict=True))


def receptive_radius(cfg: UNetConfig) -> tuple[int, ...]:
    """Distance, per axis, from an output pixel to the farthest input pixel that can affect it.

    For a same-padding network, tiles whose discarded margin is at least this radius (and that
    sit on the pooling grid) never see the zero padding of their own edges: stitching is then
    exact, like the valid network's overlap-tile strategy.

    Examples
    --------
    >>> from useg.nets.config import preset
    >>> receptive_radius(preset("ronneberger2015", padding="same"))
    (107, 107)
    """
    radius = []
    for axis in range(cfg.ndim):
        scale, r = 1, 0
        for level in range(cfg.depth + 1):
            k = cfg.kernels()[level][axis] // 2
            convs = 2 if level == cfg.depth else 4  # contracting and expanding convolutions
            r += convs * k * scale
            if level < cfg.depth:
                p = cfg.pools()[level][axis]
                r += (p - 1) * scale  # a pooling window reaches p - 1 pixels further
                scale *= p
        radius.append(r)
    return tuple(radius)


def pool_step(cfg: UNetConfig) -> tuple[int, ...]:
    """Step between consecutive valid input sizes per axis (product of the pooling factors)."""
    return tuple(math.prod(p[a] for p in cfg.pools()) for a in range(cfg.ndim))


def anisotropic_pools(
    spacing: Sequence[float], depth: int, ratio: float = 2.0
) -> tuple[tuple[int, ...], ...]:
    """Pooling factors per level for voxels of the given size (an nnU-Net-like rule).

    At each level an axis is pooled by 2 only if its current voxel size is below ``ratio``
    times the current size of the finest axis; pooling then doubles the size of the pooled
    axes. Thick slices are thus left alone until the in-plane voxels have grown about as
    coarse as them, and from there on all axes pool together, so the deep levels see roughly
    isotropic voxels. Isotropic spacing (and anything within a factor ``ratio``) pools every
    axis at every level, which is the plain U-Net.

    Parameters
    ----------
    spacing : sequence of float
        Voxel size per spatial axis ((Z,) Y, X), in any unit.
    depth : int
        Number of poolings.
    ratio : float
        An axis this many times coarser than the finest one is not pooled (2, as nnU-Net).

    Returns
    -------
    ``depth`` tuples of pooling factors (1 or 2) per axis, for :class:`UNetConfig` ``pool``.

    Examples
    --------
    >>> anisotropic_pools((50, 4, 4), 4)
    ((1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))
    >>> anisotropic_pools((0.235, 0.15, 0.15), 2)
    ((2, 2, 2), (2, 2, 2))
    """
    size = [float(s) for s in spacing]
    if not size or not all(math.isfinite(s) and s > 0 for s in size):
        raise ConfigError(f"voxel spacing must be positive numbers, got {tuple(spacing)}")
    if depth < 0:
        raise ConfigError(f"depth must be >= 0, got {depth}")
    pools = []
    for _ in range(depth):
        finest = min(size)
        level = tuple(2 if s < ratio * finest else 1 for s in size)
        size = [s * f for s, f in zip(size, level, strict=True)]
        pools.append(level)
    return tuple(pools)


# ----------------------------------------------------------------------------------------------
# Tiles


def tile_context(cfg: UNetConfig) -> tuple[int, ...]:
    """Input context a tile needs on each side: the halo of a valid network, or for a same
    network the receptive radius rounded up to the pooling grid (its discarded margin)."""
    if cfg.padding == "valid":
        return halo(cfg)
    return tuple(
        -(-r // s) * s for r, s in zip(receptive_radius(cfg), pool_step(cfg), strict=True)
    )


def tile_margin(cfg: UNetConfig, tile: Sequence[int]) -> tuple[int, ...]:
    """Output discarded per side of a tile: nothing for a valid network; for a same network its
    context, or, for a tile too small for that, what keeps at least one pooling step."""
    if cfg.padding == "valid":
        return (0,) * cfg.ndim
    return tuple(
        min(c, (t - s) // 2 // s * s)
        for c, t, s in zip(tile_context(cfg), tile, pool_step(cfg), strict=True)
    )


# ----------------------------------------------------------------------------------------------
# The shapes of the inference forward pass, and the work and memory they cost


def forward_shapes(cfg: UNetConfig, tile: Sequence[int]) -> tuple[list, list]:
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


def up_channels(cfg: UNetConfig, c_in: int) -> int:
    """Channels out of the up-convolution that takes ``c_in`` channels."""
    return c_in if cfg.up_keep_channels else c_in // 2


def _convolutions(cfg: UNetConfig,
                  tile: Sequence[int]) -> list[tuple[int, int, int, tuple[int, ...]]]:
    """(input channels, output channels, taps per output pixel, output shape) of every
    convolution of one tile, up-convolutions and the head included."""
    down, up = forward_shapes(cfg, tile)
    taps = [math.prod(k) for k in cfg.kernels()]
    layers, c_in = [], cfg.in_channels
    for level, (_, a, b) in enumerate(down):
        mid, out = cfg.level_channels(level)
        layers += [(c_in, mid, taps[level], a), (mid, out, taps[level], b)]
        c_in = out
    for level, u, a, b in up:
        c_up, c_skip = up_channels(cfg, c_in), cfg.level_channels(level)[1]
        # With the stride equal to the kernel, each output pixel of an up-convolution sees one tap.
        layers += [(c_in, c_up, 1, u), (c_up + c_skip, c_skip, taps[level], a),
                   (c_skip, c_skip, taps[level], b)]
        c_in = c_skip
    return [*layers, (c_in, cfg.classes, 1, up[-1][3] if up else down[-1][2])]


def mac_terms(cfg: UNetConfig, tile: Sequence[int]) -> list[tuple[int, tuple[int, ...]]]:
    """(multiply-accumulates per output pixel, output shape) of every convolution of one tile,
    up-convolutions and the head included."""
    return [(taps * c_in * c_out, shape) for c_in, c_out, taps, shape in _convolutions(cfg, tile)]


def conv_macs(cfg: UNetConfig, tile: Sequence[int]) -> int:
    """Multiply-accumulates of all convolutions of one tile."""
    return sum(c * math.prod(shape) for c, shape in mac_terms(cfg, tile))


def training_step_bytes(cfg: UNetConfig, tile: Sequence[int], itemsize: int = 4) -> int:
    """About the peak memory of one training step on one tile: four times the bytes of every
    convolution's output (a training step holds each output, its normalised and activated
    copies for the backward pass, and their gradients; the papers' networks measured 3.0 and
    3.2 times at their training tiles, ``bench/train_step.py``, freed memory handed back)."""
    outputs = sum(c_out * math.prod(shape) for _, c_out, _, shape in _convolutions(cfg, tile))
    return 4 * outputs * itemsize


def peak_bytes(cfg: UNetConfig, tile: Sequence[int], itemsize: int = 4) -> int:
    """Peak memory of the tensors that :func:`useg.nets.forward.inference_forward` and the
    predictor hold for one tile.

    Replays the forward pass's allocations and releases: activations at ``itemsize`` bytes,
    the input (raw, normalised, on the device, and the next tile being read) and the softmax
    (logits copied to float32, probabilities) at four.
    """
    down, up = forward_shapes(cfg, tile)
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
        c_up, c_skip = up_channels(cfg, c_in), cfg.level_channels(level)[1]
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
