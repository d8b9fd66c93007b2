"""Data augmentation for training: one spatial resampling and gray-value changes, 2D and 3D.

Spatial augmentation follows the papers: a smooth elastic deformation from random displacements
of a coarse grid of control points (U-Net, Ronneberger 2015: 3x3 grid, std 10 px; 3D U-Net,
Cicek 2016: a control point every 32 voxels, std 4 voxels) interpolated to every pixel by a
cubic B-spline, combined with rotation, flips, scaling and a shift. All of it is composed into a
single sampling grid, so the image, labels and weights are resampled once with
:func:`torch.nn.functional.grid_sample` (image: linear or 2D bicubic with mirrored borders;
labels and weights together: nearest neighbour, outside the input -> ignore / 0). The
displacement convention and spline are those of the ``elasticdeform`` package: given the same
control displacements both produce the same image (checked in ``bench/augment.py``).

Pattern: pure functions apply given parameters (:func:`deform`, :func:`adjust_gray`); the random
side only draws parameters from a seeded :class:`torch.Generator` (:func:`draw_params`), so a
seed replays the same augmentation. Everything runs on the device of the input tensors.

Conventions (array axes, pinned by tests): spatial axes are ``(Z,) Y, X`` in array order and
every coordinate or displacement vector is given in that order, in voxels.

* ``shift[a] = +s`` moves the content by ``+s`` voxels along array axis ``a``.
* A rotation by angle ``+t`` in the plane ``(a, b)`` turns content from axis ``a`` towards axis
  ``b``; for a 2D image ``(Y, X)`` shown with Y downwards, plane ``(0, 1)`` and ``t > 0`` is
  counter-clockwise on screen.
* ``scale[a] > 1`` enlarges the content along axis ``a``; ``flips[a]`` mirrors it.
* The elastic displacement ``u`` is a sampling offset: the output at ``x`` is read from the
  (affinely mapped) source position plus ``u(x)``, so content moves by about ``-u``.

The affine part is applied about the centre of the input frame: the output voxel ``o`` (in input
frame coordinates) samples the input at ``c + F S^-1 R^T (o - c - shift) + u(o)``, with
``c = (shape - 1) / 2``, ``R`` the rotation, ``S`` the scaling and ``F`` the flips.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from useg.errors import ConfigError, InputError
from useg.labels import IGNORE

__all__ = [
    "DeformParams",
    "GrayParams",
    "AugmentParams",
    "AugmentConfig",
    "RandomAugment",
    "rotation_matrix",
    "control_grid_shape",
    "spline_matrix",
    "dense_displacement",
    "sampling_coordinates",
    "deform",
    "adjust_gray",
    "draw_deform_params",
    "draw_gray_params",
    "draw_params",
    "augment_sample",
]

# The papers' elastic deformations, by number of spatial dimensions.
PAPER_ELASTIC = {
    2: {"grid_shape": (3, 3), "sigma": 10.0},  # Ronneberger et al. 2015
    3: {"grid_spacing": 32.0, "sigma": 4.0},  # Cicek et al. 2016
}


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class DeformParams:
    """Parameters of one spatial transform (see the module docstring for the conventions).

    Attributes
    ----------
    rotation : tuple of tuple of float
        ``(n, n)`` rotation matrix applied to the content.
    scale : tuple of float
        Zoom of the content per axis.
    flips : tuple of bool
        Mirror the content along each axis.
    shift : tuple of float
        Translation of the content per axis, in voxels.
    displacement : torch.Tensor or None
        ``(n, *grid_shape)`` sampling offsets of the control points, in voxels (component ``a``
        along array axis ``a``); the control points span the input frame from its first to its
        last voxel. None: no elastic deformation.
    """

    rotation: tuple[tuple[float, ...], ...]
    scale: tuple[float, ...]
    flips: tuple[bool, ...]
    shift: tuple[float, ...]
    displacement: torch.Tensor | None = None

    @property
    def ndim(self) -> int:
        return len(self.scale)

    @classmethod
    def identity(cls, ndim: int) -> DeformParams:
        """Parameters that leave the data unchanged.

        Examples
        --------
        >>> DeformParams.identity(2).scale
        (1.0, 1.0)
        """
        eye = tuple(tuple(float(i == j) for j in range(ndim)) for i in range(ndim))
        return cls(eye, (1.0,) * ndim, (False,) * ndim, (0.0,) * ndim, None)

    def sampling_matrix(self) -> np.ndarray:
        """``F S^-1 R^T``: maps centred output coordinates to centred input coordinates."""
        rot = np.asarray(self.rotation, np.float64)
        flip = np.where(self.flips, -1.0, 1.0)
        return (flip / np.asarray(self.scale, np.float64))[:, None] * rot.T


@dataclass(frozen=True)
class GrayParams:
    """Gray-value changes, applied in this order: gamma, contrast, brightness, noise.

    Attributes
    ----------
    gamma : float
        Exponent applied to each channel rescaled to [0, 1] by its min and max (then rescaled
        back), so the value range is kept.
    contrast : float
        Factor applied to each channel's deviation from its mean.
    brightness : float
        Added to every value (in the units of the normalised image).
    noise_std : float
        Standard deviation of added Gaussian noise.
    noise_seed : int
        Seed of the noise (drawn on the CPU, so it is the same on every device).
    """

    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    noise_std: float = 0.0
    noise_seed: int = 0


@dataclass(frozen=True)
class AugmentParams:
    """Everything one augmentation draw decided."""

    deform: DeformParams
    gray: GrayParams | None


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`draw_params` draws; defaults follow the U-Net and 3D U-Net papers.

    Attributes
    ----------
    elastic : bool
        Elastic deformation on/off.
    grid_shape, grid_spacing : optional
        Control points per axis, or the spacing between them in voxels (the number of points
        then follows from the input shape). Neither given: the paper's choice for the number of
        dimensions (2D: 3x3 grid; 3D: every 32 voxels).
    elastic_sigma : float, optional
        Std of the control point displacements in voxels (None: 10 in 2D, 4 in 3D).
    rotate : bool
        Random rotation, uniform in ``[-max_angle, max_angle]`` degrees per rotation plane.
    max_angle : float
    rotation_planes : sequence of (int, int), optional
        Planes to rotate in. None: the plane of a 2D image; for 3D with a known voxel
        spacing, every plane of two axes with the same voxel size (all three when isotropic,
        ``(Y, X)`` for (4, 1, 1), ``(Z, Y)`` for (1, 1, 4), none when all three differ);
        ``(Y, X)`` for an unknown spacing.
    flip_axes : sequence of int, optional
        Axes that may be mirrored, each with probability ``flip_probability`` (None: all).
    scale : (float, float)
        Range of the zoom factor (uniform).
    isotropic_scale : bool
        One zoom factor for all axes, or one per axis.
    max_shift : float
        Random shift up to this many voxels per axis (0: none).
    gray : bool
        Gray-value augmentation on/off; then each of the following is drawn uniformly.
    brightness : float
        Additive offset in ``[-brightness, brightness]``.
    contrast : (float, float)
    gamma : (float, float)
        Drawn log-uniformly.
    noise_std : float
        Noise std drawn in ``[0, noise_std]``.
    interpolation : {"linear", "cubic"}
        Image interpolation ("cubic" only in 2D).
    """

    elastic: bool = True
    grid_shape: tuple[int, ...] | None = None
    grid_spacing: float | tuple[float, ...] | None = None
    elastic_sigma: float | None = None
    rotate: bool = True
    max_angle: float = 180.0
    rotation_planes: tuple[tuple[int, int], ...] | None = None
    flip_axes: tuple[int, ...] | None = None
    flip_probability: float = 0.5
    scale: tuple[float, float] = (0.9, 1.1)
    isotropic_scale: bool = True
    max_shift: float = 0.0
    gray: bool = True
    brightness: float = 0.1
    contrast: tuple[float, float] = (0.9, 1.1)
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.03
    interpolation: str = "linear"

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> AugmentConfig:
        """Build from a plain dict (e.g. a training configuration); unknown keys are errors.

        Examples
        --------
        >>> AugmentConfig.from_dict({"rotate": False, "scale": [0.8, 1.2]}).scale
        (0.8, 1.2)
        """
        options = dict(options or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigError(f"unknown augmentation option(s) {unknown}; known: {sorted(names)}")
        for key, value in options.items():
            if isinstance(value, list):
                options[key] = (
                    tuple(tuple(v) if isinstance(v, list) else v for v in value)
                    if value
                    else tuple(value)
                )
        return cls(**options)

    def check(self, ndim: int) -> None:
        """Raise ConfigError for values that cannot work for ``ndim`` spatial axes."""
        if ndim not in (2, 3):
            raise ConfigError(f"augmentation supports 2 or 3 spatial dimensions, got {ndim}")
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ConfigError(f"scale range must satisfy 0 < low <= high, got {self.scale}")
        glo, ghi = self.gamma
        if not 0 < glo <= ghi:
            raise ConfigError(f"gamma range must satisfy 0 < low <= high, got {self.gamma}")
        if not 0 <= self.flip_probability <= 1:
            raise ConfigError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        if self.interpolation not in ("linear", "cubic"):
            raise ConfigError(
                f"interpolation must be 'linear' or 'cubic', not {self.interpolation!r}"
            )
        if self.interpolation == "cubic" and ndim != 2:
            raise ConfigError("cubic image interpolation is available in 2D only")
        for a, b in self.rotation_planes or ():
            if not (0 <= a < ndim and 0 <= b < ndim and a != b):
                raise ConfigError(f"rotation plane {(a, b)} is not a pair of axes of {ndim}-D")
        for a in self.flip_axes or ():
            if not 0 <= a < ndim:
                raise ConfigError(f"flip axis {a} is not an axis of {ndim}-D data")
        if self.grid_shape is not None and (
            len(self.grid_shape) != ndim or min(self.grid_shape) < 1
        ):
            raise ConfigError(f"grid_shape must be {ndim} counts >= 1, got {self.grid_shape}")


# ----------------------------------------------------------------------------- building blocks


def rotation_matrix(ndim: int, angle: float, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """Rotation by ``angle`` radians in the plane of ``axes``, turning ``axes[0]`` to ``axes[1]``.

    Examples
    --------
    >>> np.round(rotation_matrix(2, np.pi / 2) @ np.array([1.0, 0.0]), 6).tolist()
    [0.0, 1.0]
    """
    a, b = (ax % ndim for ax in axes)
    rot = np.eye(ndim)
    c, s = math.cos(angle), math.sin(angle)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
    return rot


def control_grid_shape(
    spatial_shape: Sequence[int], grid_spacing: float | Sequence[float]
) -> tuple[int, ...]:
    """Number of control points per axis for about ``grid_spacing`` voxels between them.

    The points span the frame from its first to its last voxel (at least 2 per axis).

    Examples
    --------
    >>> control_grid_shape((132, 132, 116), 32)
    (5, 5, 5)
    """
    spacing = np.broadcast_to(np.asarray(grid_spacing, np.float64), (len(spatial_shape),))
    return tuple(
        max(2, int(round((n - 1) / s)) + 1) for n, s in zip(spatial_shape, spacing, strict=True)
    )


def _cubic_bspline(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(
        x < 1, 2.0 / 3.0 - x**2 + 0.5 * x**3, np.where(x < 2, (2.0 - x) ** 3 / 6.0, 0.0)
    )


def _mirror(k: np.ndarray, n: int) -> np.ndarray:
    period = 2 * (n - 1)
    k = np.mod(k, period)
    return np.where(k > n - 1, period - k, k)


def spline_matrix(n_points: int, positions: np.ndarray) -> np.ndarray:
    """Linear map from values at ``n_points`` knots to an interpolating cubic spline at positions.

    The spline is the cubic B-spline through the knot values ``0 .. n_points - 1`` with mirror
    boundaries (as ``scipy.ndimage.map_coordinates(..., order=3, mode="mirror")``); positions are
    in knot units. Returns a float64 array ``(len(positions), n_points)``.

    Examples
    --------
    >>> m = spline_matrix(3, np.array([0.0, 1.0, 2.0]))
    >>> np.allclose(m, np.eye(3))
    True
    """
    positions = np.asarray(positions, np.float64)
    if n_points == 1:
        return np.ones((positions.size, 1))
    # Collocation: value at knot i = sum_k c_k beta(i - k), coefficients mirrored at the ends.
    knots = np.arange(n_points)
    collocation = np.zeros((n_points, n_points))
    for offset in (-1, 0, 1):
        np.add.at(collocation, (knots, _mirror(knots + offset, n_points)), _cubic_bspline(offset))
    base = np.floor(positions).astype(np.int64) - 1
    basis = np.zeros((positions.size, n_points))
    rows = np.arange(positions.size)
    for j in range(4):
        k = base + j
        np.add.at(basis, (rows, _mirror(k, n_points)), _cubic_bspline(positions - k))
    return basis @ np.linalg.inv(collocation)


def _crop_start(full: Sequence[int], crop: Sequence[int]) -> tuple[int, ...]:
    return tuple((f - c) // 2 for f, c in zip(full, crop, strict=True))


def dense_displacement(
    displacement: torch.Tensor,
    spatial_shape: Sequence[int],
    out_shape: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-voxel displacement from control-point displacements (cubic B-spline interpolation).

    Parameters
    ----------
    displacement : Tensor ``(n, *grid_shape)``
        Displacements of the control points, which span ``spatial_shape`` from the first to the
        last voxel along each axis.
    spatial_shape : sequence of int
        The frame the control points span.
    out_shape : sequence of int, optional
        Evaluate only on the centred crop of this shape (start ``(full - crop) // 2``).
    dtype : torch.dtype

    Returns
    -------
    Tensor ``(n, *out_shape)`` on the device of ``displacement``.

    Examples
    --------
    >>> u = dense_displacement(torch.ones(2, 3, 3), (10, 12))
    >>> tuple(u.shape), bool(torch.allclose(u, torch.ones(())))
    ((2, 10, 12), True)
    """
    ndim = len(spatial_shape)
    out_shape = tuple(spatial_shape) if out_shape is None else tuple(out_shape)
    start = _crop_start(spatial_shape, out_shape)
    field = displacement.to(dtype)
    for axis in range(ndim):
        matrix = _axis_spline_matrix(
            int(displacement.shape[axis + 1]), int(spatial_shape[axis]), start[axis],
            out_shape[axis],
        )
        matrix = torch.tensor(matrix, dtype=dtype, device=field.device)  # a copy: cached
        field = torch.movedim(torch.tensordot(field, matrix, dims=([axis + 1], [1])), -1, axis + 1)
    return field


@functools.lru_cache(maxsize=64)
def _axis_spline_matrix(n_ctrl: int, size: int, start: int, length: int) -> np.ndarray:
    """Spline matrix of voxels ``start .. start + length - 1`` of an axis of ``size`` voxels
    spanned by ``n_ctrl`` control points (shared between calls: do not modify)."""
    # A training run asks for the same few frames every step: building the matrix costs more
    # than the resampling it feeds.
    pixels = start + np.arange(length, dtype=np.float64)
    knots = pixels * ((n_ctrl - 1) / (size - 1)) if size > 1 else np.zeros_like(pixels)
    return spline_matrix(n_ctrl, knots)


def _fill_coordinates(
    dest: list[torch.Tensor],
    params: DeformParams,
    spatial_shape: Sequence[int],
    out_shape: Sequence[int],
    scale: Sequence[float],
    bias: Sequence[float],
) -> None:
    """Write ``scale[a] * p_a + bias[a]`` into ``dest[a]``, ``p`` the source position (voxels).

    The affine part is a sum of one 1-D ramp per axis, broadcast, so building the coordinates
    costs one pass per axis plus one for the elastic field.
    """
    ndim = len(spatial_shape)
    device, dtype = dest[0].device, dest[0].dtype
    start = _crop_start(spatial_shape, out_shape)
    centre = (np.asarray(spatial_shape, np.float64) - 1) / 2
    matrix = params.sampling_matrix()
    offset = centre - matrix @ (centre + np.asarray(params.shift, np.float64))
    ramps = [
        torch.arange(start[b], start[b] + out_shape[b], device=device, dtype=torch.float64)
        for b in range(ndim)
    ]
    for a in range(ndim):
        total = None
        for b in range(ndim):
            term = ramps[b] * (scale[a] * matrix[a, b])
            if b == 0:
                term += scale[a] * offset[a] + bias[a]
            view = [1] * ndim
            view[b] = out_shape[b]
            term = term.to(dtype).view(view)
            if b < ndim - 1:
                total = term if total is None else total + term
            elif total is None:
                dest[a].copy_(term.expand(dest[a].shape))
            else:
                torch.add(total, term, out=dest[a])
    if params.displacement is not None:
        control = params.displacement.to(device=device, dtype=torch.float64)
        control = control * torch.tensor(scale, dtype=torch.float64, device=device).view(
            (ndim,) + (1,) * ndim
        )
        field = dense_displacement(control, spatial_shape, out_shape, dtype=dtype)
        for a in range(ndim):
            dest[a].add_(field[a])


def sampling_coordinates(
    params: DeformParams,
    spatial_shape: Sequence[int],
    out_shape: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Source position (voxels, array axis order) of every output voxel.

    Parameters
    ----------
    params : DeformParams
    spatial_shape : sequence of int
        Shape of the input frame.
    out_shape : sequence of int, optional
        Output: the centred crop of this shape of the input frame (default: the whole frame).
    device, dtype
        Where and how to build the coordinates.

    Returns
    -------
    Tensor ``(n, *out_shape)``.

    Examples
    --------
    >>> p = sampling_coordinates(DeformParams.identity(2), (4, 5), out_shape=(2, 3))
    >>> p[:, 0, 0].tolist()
    [1.0, 1.0]
    """
    ndim = len(spatial_shape)
    out_shape = tuple(spatial_shape) if out_shape is None else tuple(out_shape)
    coords = torch.empty((ndim, *out_shape), device=device, dtype=dtype)
    _fill_coordinates(list(coords), params, spatial_shape, out_shape, [1.0] * ndim, [0.0] * ndim)
    return coords


def _sampling_grid(
    params: DeformParams,
    spatial_shape: Sequence[int],
    out_shape: Sequence[int],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The grid for ``grid_sample`` (align_corners=True): ``(*out_shape, n)``, x first."""
    ndim = len(spatial_shape)
    grid = torch.empty((*out_shape, ndim), device=device, dtype=dtype)
    # Normalised coordinate -1 .. 1 from the first to the last voxel; a length-1 axis has only 0.
    scale = [2.0 / (n - 1) if n > 1 else 0.0 for n in spatial_shape]
    bias = [-1.0 if n > 1 else 0.0 for n in spatial_shape]
    dest = [grid[..., ndim - 1 - a] for a in range(ndim)]
    _fill_coordinates(dest, params, spatial_shape, out_shape, scale, bias)
    return grid


def _exact_in(labels: torch.Tensor, shift: int, dtype: torch.dtype) -> bool:
    """Whether ``labels - shift`` is exactly representable in the float ``dtype``."""
    if labels.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16) and abs(shift) < 2**15:
        return True
    limit = 2.0 / torch.finfo(dtype).eps  # integers up to this are exact
    lo, hi = torch.aminmax(labels.reshape(-1).to(torch.int64))
    return int(hi) - shift < limit and int(lo) - shift > -limit


def deform(
    image: torch.Tensor,
    labels: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    params: DeformParams | None = None,
    *,
    out_shape: Sequence[int] | None = None,
    label_shape: Sequence[int] | None = None,
    interpolation: str = "linear",
    ignore_index: int = IGNORE,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Resample an image and its labels and weights once through one composed transform.

    Parameters
    ----------
    image : Tensor ``(C, *S)``
        Two or three spatial axes; integer images are converted to float32.
    labels : Tensor ``S``, optional
        Integer labels; nearest neighbour. Output voxels whose nearest source voxel lies outside
        the input get ``ignore_index`` (unsigned/bool labels become int64 to hold a negative one).
    weights : Tensor ``S``, optional
        Nearest neighbour from the same source voxel as the labels; 0 outside the input.
    params : DeformParams
        None: identity.
    out_shape : sequence of int, optional
        Image output: the centred crop of this shape of the input frame (start
        ``(S - out_shape) // 2``), default the whole frame. Lets a training loop read a larger
        window (so rotations pull in real pixels) and get the network input tile directly.
    label_shape : sequence of int, optional
        Labels/weights output, likewise a centred crop (default ``out_shape``): e.g. the
        network's smaller output region. Both crops share the one transform.
    interpolation : {"linear", "cubic"}
        Image interpolation: (bi/tri)linear, or bicubic (2D only). Outside the input the image
        is mirrored (reflection about the edge voxels' centres), so no artificial black corners.
    ignore_index : int

    Returns
    -------
    (image, labels, weights), each None where the input was None.

    Examples
    --------
    >>> img = torch.arange(20.0).reshape(1, 4, 5)
    >>> out, _, _ = deform(img, params=DeformParams.identity(2))
    >>> bool(torch.allclose(out, img))
    True
    """
    params, out_shape, label_shape = _deform_settings(
        image, labels, weights, params, out_shape, label_shape, interpolation
    )
    spatial = tuple(image.shape[1:])
    if not image.is_floating_point():
        image = image.float()
    dtype = image.dtype
    grid = _sampling_grid(params, spatial, out_shape, image.device, dtype)
    out_image = F.grid_sample(
        image[None],
        grid[None],
        mode={"linear": "bilinear", "cubic": "bicubic"}[interpolation],
        padding_mode="reflection",
        align_corners=True,
    )[0]
    if labels is None and weights is None:
        return out_image, None, None
    label_grid = _label_grid(grid, params, spatial, out_shape, label_shape)
    out_labels, out_weights = _sample_nearest(labels, weights, label_grid, ignore_index, dtype)
    return out_image, out_labels, out_weights


def _deform_settings(
    image: torch.Tensor,
    labels: torch.Tensor | None,
    weights: torch.Tensor | None,
    params: DeformParams | None,
    out_shape: Sequence[int] | None,
    label_shape: Sequence[int] | None,
    interpolation: str,
) -> tuple[DeformParams, tuple[int, ...], tuple[int, ...]]:
    """The arguments of :func:`deform` checked, with their defaults: the parameters, the image
    output shape and the label output shape."""
    if image.ndim not in (3, 4):
        raise InputError(f"image must be (C, Y, X) or (C, Z, Y, X), got shape {tuple(image.shape)}")
    spatial = tuple(image.shape[1:])
    ndim = len(spatial)
    params = DeformParams.identity(ndim) if params is None else params
    if params.ndim != ndim:
        raise ConfigError(f"parameters are for {params.ndim}-D data, the image is {ndim}-D")
    disp = params.displacement
    if disp is not None and (disp.ndim != ndim + 1 or disp.shape[0] != ndim):
        raise ConfigError(
            f"displacement must be ({ndim}, *grid_shape) for {ndim}-D data, "
            f"got shape {tuple(disp.shape)}"
        )
    for name, arr in (("labels", labels), ("weights", weights)):
        if arr is not None and tuple(arr.shape) != spatial:
            raise InputError(f"{name} shape {tuple(arr.shape)} differs from the image's {spatial}")
    if interpolation not in ("linear", "cubic") or (interpolation == "cubic" and ndim != 2):
        raise ConfigError(f"interpolation {interpolation!r} is not available for {ndim}-D images")
    out_shape = spatial if out_shape is None else tuple(int(n) for n in out_shape)
    label_shape = out_shape if label_shape is None else tuple(int(n) for n in label_shape)
    for name, shape in (("out_shape", out_shape), ("label_shape", label_shape)):
        if len(shape) != ndim or any(not 0 < o <= s for o, s in zip(shape, spatial, strict=True)):
            raise ConfigError(f"{name} {shape} must be a crop of the input shape {spatial}")
    return params, out_shape, label_shape


def _label_grid(
    grid: torch.Tensor,
    params: DeformParams,
    spatial: tuple[int, ...],
    out_shape: tuple[int, ...],
    label_shape: tuple[int, ...],
) -> torch.Tensor:
    """The sampling grid of the labels' centred crop, given the image's ``grid``."""
    if all(lab <= out for lab, out in zip(label_shape, out_shape, strict=True)):
        # Both are centred crops of one frame: the label grid is a sub-box of the image grid.
        box = tuple(
            slice((s - lab) // 2 - (s - o) // 2, (s - lab) // 2 - (s - o) // 2 + lab)
            for s, o, lab in zip(spatial, out_shape, label_shape, strict=True)
        )
        return grid[box]
    return _sampling_grid(params, spatial, label_shape, grid.device, grid.dtype)


def _sample_nearest(
    labels: torch.Tensor | None,
    weights: torch.Tensor | None,
    label_grid: torch.Tensor,
    ignore_index: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Labels and weights resampled through ``label_grid`` (nearest neighbour); outside the
    input, labels are ``ignore_index`` and weights 0. ``dtype``: the image's float type."""
    if labels is not None and not labels.is_signed() and ignore_index < 0:
        labels = labels.long()  # so that voxels from outside can hold a negative ignore_index
    # Labels and weights share one nearest-neighbour pass. Zero padding marks outside voxels:
    # labels are sampled shifted by -ignore_index, so outside reads back as ignore_index.
    sample_dtype = dtype
    if labels is not None and not _exact_in(labels, ignore_index, dtype):
        sample_dtype = torch.float64
    spatial = (labels if labels is not None else weights).shape
    # Both go into one buffer directly (no per-array copy, then a stack).
    stacked = torch.empty(
        ((labels is not None) + (weights is not None), *spatial),
        dtype=sample_dtype, device=label_grid.device,
    )
    if labels is not None:
        stacked[0].copy_(labels).sub_(ignore_index)
    if weights is not None:
        stacked[-1].copy_(weights)
    sampled = F.grid_sample(
        stacked[None],
        label_grid[None].to(sample_dtype),
        mode="nearest",
        padding_mode="zeros",
        align_corners=True,
    )[0]
    out_labels = out_weights = None
    if labels is not None:
        # Nearest sampling copies values: exact integers stay exact.
        out_labels = sampled[0].add_(ignore_index).to(labels.dtype)
    if weights is not None:
        out_weights = sampled[-1].to(weights.dtype if weights.is_floating_point() else dtype)
    return out_labels, out_weights


def adjust_gray(image: torch.Tensor, params: GrayParams) -> torch.Tensor:
    """Apply gray-value changes to an image ``(C, *S)`` (see :class:`GrayParams`).

    Examples
    --------
    >>> x = torch.tensor([[0.0, 1.0, 2.0]])
    >>> adjust_gray(x, GrayParams(contrast=2.0, brightness=0.5)).tolist()
    [[-0.5, 1.5, 3.5]]
    """
    if not image.is_floating_point():
        image = image.float()
    channels = image.shape[0]
    flat = image.reshape(channels, -1)
    view = (channels,) + (1,) * (image.ndim - 1)
    # Each step writes into ``out`` once it is a fresh tensor (never into the caller's image),
    # with the operations and their order unchanged, so the values are those of the plain
    # expressions: this only saves a temporary array per step.
    out = image
    if params.gamma != 1.0:
        lo = flat.amin(dim=1).view(view)
        span = (flat.amax(dim=1).view(view) - lo).clamp_min(torch.finfo(image.dtype).tiny)
        out = (out - lo).div_(span).clamp_(0, 1).pow_(params.gamma).mul_(span).add_(lo)
    if params.contrast != 1.0:
        mean = out.reshape(channels, -1).mean(dim=1).view(view)
        out = (out - mean).mul_(params.contrast).add_(mean)
    if params.brightness != 0.0:
        out = out.add_(params.brightness) if out is not image else out + params.brightness
    if params.noise_std > 0:
        gen = torch.Generator().manual_seed(int(params.noise_seed))
        noise = torch.randn(image.shape, generator=gen, dtype=image.dtype)
        noise = noise.to(image.device).mul_(params.noise_std)
        out = out.add_(noise) if out is not image else out + noise
    return out


# ----------------------------------------------------------------------------- random draws


def _uniform(gen: torch.Generator, lo: float, hi: float, n: int = 1) -> list[float]:
    u = torch.rand(n, generator=gen, dtype=torch.float64, device=gen.device).cpu()
    return (lo + (hi - lo) * u).tolist()


def _rotation_planes(config: AugmentConfig, ndim: int, spacing) -> tuple[tuple[int, int], ...]:
    if config.rotation_planes is not None:
        return tuple(tuple(p) for p in config.rotation_planes)
    if ndim == 2:
        return ((0, 1),)
    if spacing is None:  # unknown: the usual stack, coarse in Z
        return ((1, 2),)
    # Only planes of equal voxel sizes: on a grid of unequal ones a rotation of the array is
    # not a rotation of the tissue (spacing (1, 1, 4) rotates in (Z, Y), not in (Y, X)).
    size = [float(s) for s in spacing]
    return tuple((a, b) for a in range(ndim) for b in range(a + 1, ndim)
                 if math.isclose(size[a], size[b], rel_tol=1e-6))


def draw_deform_params(
    generator: torch.Generator,
    spatial_shape: Sequence[int],
    config: AugmentConfig | None = None,
    spacing: Sequence[float] | None = None,
) -> DeformParams:
    """Draw a spatial transform for an input frame of ``spatial_shape``.

    Every draw consumes the same amount of randomness whatever the outcome, so a seed always
    replays the same transform.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> p = draw_deform_params(g, (64, 64))
    >>> tuple(p.displacement.shape)
    (2, 3, 3)
    """
    config = AugmentConfig() if config is None else config
    ndim = len(spatial_shape)
    config.check(ndim)
    rotation = np.eye(ndim)
    planes = _rotation_planes(config, ndim, spacing)
    angles = _uniform(generator, -config.max_angle, config.max_angle, max(len(planes), 1))
    if config.rotate:
        for plane, angle in zip(planes, angles, strict=False):
            rotation = rotation_matrix(ndim, math.radians(angle), plane) @ rotation
    flip_axes = range(ndim) if config.flip_axes is None else config.flip_axes
    coins = _uniform(generator, 0.0, 1.0, ndim)
    flips = tuple(a in flip_axes and coins[a] < config.flip_probability for a in range(ndim))
    zoom = _uniform(generator, *config.scale, n=ndim)
    scale = tuple(zoom[:1] * ndim if config.isotropic_scale else zoom)
    shift = tuple(_uniform(generator, -config.max_shift, config.max_shift, ndim))

    paper = PAPER_ELASTIC[ndim]
    if config.grid_shape is not None:
        grid = tuple(int(g) for g in config.grid_shape)
    elif config.grid_spacing is not None:
        grid = control_grid_shape(spatial_shape, config.grid_spacing)
    elif "grid_shape" in paper:
        grid = paper["grid_shape"]
    else:
        grid = control_grid_shape(spatial_shape, paper["grid_spacing"])
    sigma = paper["sigma"] if config.elastic_sigma is None else float(config.elastic_sigma)
    noise = torch.randn(
        (ndim, *grid), generator=generator, dtype=torch.float64, device=generator.device
    ).cpu()
    displacement = sigma * noise if config.elastic and sigma > 0 else None
    return DeformParams(
        rotation=tuple(tuple(float(v) for v in row) for row in rotation),
        scale=tuple(float(s) for s in scale),
        flips=flips,
        shift=tuple(float(s) for s in shift),
        displacement=displacement,
    )


def draw_gray_params(generator: torch.Generator, config: AugmentConfig | None = None) -> GrayParams:
    """Draw gray-value changes (see :class:`AugmentConfig`).

    Examples
    --------
    >>> p = draw_gray_params(torch.Generator().manual_seed(0))
    >>> 0.8 <= p.gamma <= 1.25
    True
    """
    config = AugmentConfig() if config is None else config
    u = _uniform(generator, 0.0, 1.0, 4)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    glo, ghi = (math.log(g) for g in config.gamma)
    return GrayParams(
        gamma=math.exp(glo + (ghi - glo) * u[0]),
        contrast=config.contrast[0] + (config.contrast[1] - config.contrast[0]) * u[1],
        brightness=config.brightness * (2 * u[2] - 1),
        noise_std=config.noise_std * u[3],
        noise_seed=seed,
    )


def draw_params(
    generator: torch.Generator,
    spatial_shape: Sequence[int],
    config: AugmentConfig | None = None,
    spacing: Sequence[float] | None = None,
) -> AugmentParams:
    """Draw one complete augmentation (spatial transform and, if enabled, gray values).

    Examples
    --------
    >>> a = draw_params(torch.Generator().manual_seed(3), (32, 32))
    >>> b = draw_params(torch.Generator().manual_seed(3), (32, 32))
    >>> a.deform.rotation == b.deform.rotation and a.gray == b.gray
    True
    """
    config = AugmentConfig() if config is None else config
    spatial = draw_deform_params(generator, spatial_shape, config, spacing)
    gray = draw_gray_params(generator, config)
    return AugmentParams(spatial, gray if config.gray else None)


class RandomAugment:
    """Random augmentation of ``(image, labels, weights)``: draws parameters, then applies them.

    Parameters
    ----------
    config : AugmentConfig, optional
    spacing : sequence of float, optional
        Voxel spacing of the data; only used to decide the default rotation planes in 3D.
    ignore_index : int
        Label of outputs that fall outside the source.

    Examples
    --------
    >>> aug = RandomAugment()
    >>> img, lab = torch.rand(1, 40, 40), torch.randint(0, 2, (40, 40))
    >>> out, out_lab, _ = aug(img, lab, generator=torch.Generator().manual_seed(0))
    >>> tuple(out.shape), tuple(out_lab.shape)
    ((1, 40, 40), (40, 40))
    """

    def __init__(
        self,
        config: AugmentConfig | None = None,
        spacing: Sequence[float] | None = None,
        ignore_index: int = IGNORE,
    ):
        self.config = AugmentConfig() if config is None else config
        self.spacing = spacing
        self.ignore_index = ignore_index

    def __call__(
        self,
        image: torch.Tensor,
        labels: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        *,
        generator: torch.Generator,
        out_shape: Sequence[int] | None = None,
        label_shape: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        params = draw_params(generator, tuple(image.shape[1:]), self.config, self.spacing)
        return self.apply(image, labels, weights, params, out_shape, label_shape)

    def apply(
        self,
        image: torch.Tensor,
        labels: torch.Tensor | None,
        weights: torch.Tensor | None,
        params: AugmentParams,
        out_shape: Sequence[int] | None = None,
        label_shape: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Apply drawn parameters: spatial resampling, then gray values on the result."""
        image, labels, weights = deform(
            image,
            labels,
            weights,
            params.deform,
            out_shape=out_shape,
            label_shape=label_shape,
            interpolation=self.config.interpolation,
            ignore_index=self.ignore_index,
        )
        if params.gray is not None:
            image = adjust_gray(image, params.gray)
        return image, labels, weights


def augment_sample(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    *,
    out_shape: Sequence[int] | None = None,
    label_shape: Sequence[int] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    options: Mapping[str, Any] | AugmentConfig | None = None,
    spacing: Sequence[float] | None = None,
    ignore_index: int = IGNORE,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """NumPy convenience for data loaders: random augmentation of one training window on the CPU.

    Parameters
    ----------
    image : ndarray ``(C, *S)``
    labels, weights : ndarray ``S``, optional
    out_shape, label_shape : sequence of int, optional
        Centred crops of the input frame for the image and for labels/weights (see
        :func:`deform`).
    seed : int, optional
        Seed of a fresh generator (ignored when ``generator`` is given).
    generator : torch.Generator, optional
    options : dict or AugmentConfig, optional
        Configuration (a dict is read with :meth:`AugmentConfig.from_dict`).
    spacing : sequence of float, optional
        Voxel spacing (decides the default 3D rotation planes).
    ignore_index : int

    Returns
    -------
    (image float32, labels of the input dtype, weights float32), None where not given.

    Examples
    --------
    >>> img = np.random.default_rng(0).random((1, 48, 48), dtype=np.float32)
    >>> out, lab, w = augment_sample(img, np.zeros((48, 48), int), out_shape=(40, 40), seed=1)
    >>> out.shape, lab.shape, w is None
    ((1, 40, 40), (40, 40), True)
    """
    config = options if isinstance(options, AugmentConfig) else AugmentConfig.from_dict(options)
    if generator is None:
        generator = torch.Generator()
        if seed is not None:
            generator.manual_seed(int(seed) % (2**63))
        else:
            generator.seed()
    image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    labels_t = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels))
    weights_t = None if weights is None else torch.from_numpy(np.ascontiguousarray(weights))
    aug = RandomAugment(config, spacing=spacing, ignore_index=ignore_index)
    out = aug(
        image_t,
        labels_t,
        weights_t,
        generator=generator,
        out_shape=out_shape,
        label_shape=label_shape,
    )
    image_o, labels_o, weights_o = (None if t is None else t.numpy() for t in out)
    if weights_o is not None:
        weights_o = weights_o.astype(np.float32, copy=False)
    return image_o, labels_o, weights_o
