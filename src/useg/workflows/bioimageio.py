"""A model file as a BioImage Model Zoo package (``useg export --format bioimageio``).

The package (a zip of a spec 0.5 ``rdf.yaml`` and its files, written and validated by
``bioimageio.spec``) describes the network as it is:

- the input ``image`` (batch, channel, [z,] y, x) takes every valid size: per spatial axis the
  smallest valid size plus a multiple of the pooling step (a parameterized size); the output
  ``probabilities`` references it, less twice the halo of a valid network (equal for same
  padding). Both come from :func:`useg.nets.export.export_geometry`.
- the model file's normalisation is the preprocessing (:func:`preprocessing`); the network returns
  logits and the package's postprocessing is a softmax over the channels, so the output is the
  class probabilities that ``useg predict`` writes.
- the weights twice: ``pytorch_state_dict`` (the architecture is
  :func:`useg.nets.unet.unet_from_config` with the header's network configuration) and
  ``torchscript`` (the TorchScript export of :func:`useg.nets.export.export_model`).
- test tensors that useg computes (the test output is useg's predictor on the test input in one
  pass), a cover image made from them, the papers to cite, and a README that says where the
  zoo's normalisation differs from useg's.

It is a workflow rather than a ``nets`` module because it predicts (the test output) and makes
its default test image with :mod:`useg.workflows.synthetic`. Writing needs ``bioimageio.spec``
(``pip install useg[bioimageio]``, which also installs ``bioimageio.core`` to test a package).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from useg.errors import ConfigError, InputError, one_line
from useg.io import normalize as norm
from useg.io.files import atomic_write, check_output_file, make_folder
from useg.nets.checkpoint import load_model, resolve_model
from useg.nets.export import export_geometry, export_header, export_model
from useg.nets.geometry import halo
from useg.nets.unet import UNet

__all__ = ["CITATIONS", "FORMAT", "INSTALL", "export_bioimageio", "preprocessing",
           "example_shape"]

#: The ``useg export --format`` name of a BioImage Model Zoo package.
FORMAT = "bioimageio"
INSTALL = "pip install useg[bioimageio]"
#: The two papers whose networks useg implements: (text, DOI).
CITATIONS = (
    ("Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical Image "
     "Segmentation. MICCAI 2015, LNCS 9351, 234-241", "10.1007/978-3-319-24574-4_28"),
    ("Cicek O, Abdulkadir A, Lienkamp SS, Brox T, Ronneberger O. 3D U-Net: Learning Dense "
     "Volumetric Segmentation from Sparse Annotation. MICCAI 2016, LNCS 9901, 424-432",
     "10.1007/978-3-319-46723-8_49"),
)
# pyproject.toml's license of useg, which the packaged models share.
_LICENSE = "BSD-3-Clause"
_AUTHORS = ("useg contributors",)
_INPUT, _OUTPUT = "image", "probabilities"
# The test output's spatial size per axis that the default test input aims at: large enough
# for a useful cover image, small enough to keep the package and its test quick.
_TARGET = {1: 512, 2: 192, 3: 24}
# The largest test input per axis taken from a user's test image (the package stays small).
_LARGEST = {1: 4096, 2: 512, 3: 96}


def _spec() -> Any:
    """The ``bioimageio.spec`` 0.5 model module, or the one-line error naming the extra."""
    try:
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise ConfigError(f"exporting a BioImage Model Zoo package needs bioimageio.spec and "
                          f"bioimageio.core: {INSTALL}") from None
    return v0_5


def _spatial_axes(ndim: int) -> str:
    return "zyx"[3 - ndim:]


def preprocessing(normalization: dict[str, Any] | None, ndim: int, in_channels: int) -> list:
    """The zoo's preprocessing closest to a model file's normalisation
    (:mod:`useg.io.normalize`; ``None`` is useg's default, percentiles 1 and 99.8).

    - ``percentile``: ``scale_range`` over the spatial axes of each sample and channel, with the
      same percentiles (linear interpolation, as NumPy).
    - ``meanstd``: ``zero_mean_unit_variance`` over the same axes.
    - ``fixed``: ``scale_linear`` with gain ``1 / scale`` and offset ``-offset / scale``.
    - ``none``: nothing.

    The zoo adds ``eps = 1e-6`` to the divisor; useg divides by the range (or the standard
    deviation) itself, and by 1 when it is 0.

    Examples
    --------
    >>> [p.id for p in preprocessing(None, 2, 1)]
    ['scale_range']
    """
    v = _spec()
    spec = dict(norm.DEFAULT if normalization is None else normalization)
    mode = spec.get("mode", "percentile")
    # Per sample and channel: useg's statistics are per image and channel.
    axes = [v.AxisId(a) for a in _spatial_axes(ndim)]
    if mode == "percentile":
        return [v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(
            axes=axes, min_percentile=float(spec.get("low", 1.0)),
            max_percentile=float(spec.get("high", 99.8))))]
    if mode == "meanstd":
        return [v.ZeroMeanUnitVarianceDescr(kwargs=v.ZeroMeanUnitVarianceKwargs(axes=axes))]
    if mode == "fixed":
        offset = [float(o) for o in spec["offset"]]
        scale = [float(s) for s in spec["scale"]]
        gain = [1.0 / s for s in scale]
        shift = [-o / s for o, s in zip(offset, scale, strict=True)]
        if all(g == 1.0 for g in gain) and all(b == 0.0 for b in shift):
            return []  # the identity, which the spec refuses to describe
        if len(gain) == 1:
            return [v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=gain[0],
                                                                  offset=shift[0]))]
        return [v.ScaleLinearDescr(kwargs=v.ScaleLinearAlongAxisKwargs(
            axis=v.AxisId("channel"), gain=gain, offset=shift))]
    if mode == "none":
        return []
    raise ConfigError(f"normalization mode {mode!r} has no BioImage Model Zoo equivalent")


def example_shape(model: UNet, available: Sequence[int] | None = None) -> tuple[int, ...]:
    """The spatial shape of the image a package's test input is made of: a valid output size
    per axis (the test input is this image mirror-padded by the halo, a valid input size).

    Without ``available`` (a test image's shape), the smallest whose size reaches a target (512,
    192 and 24 pixels per axis in 1D, 2D and 3D); with it, the largest that fits in it (at most
    4096, 512 and 96 per axis), or an :class:`InputError` when the image is smaller than the
    network's smallest output.

    Examples
    --------
    >>> example_shape(UNet("ronneberger2015", width=4, depth=2))
    (192, 192)
    """
    cfg = model.config
    geometry = export_geometry(model)
    smallest, step = geometry["min_output_shape"], geometry["pool_step"]
    if available is None:
        # Each pooling step of input adds as much output (output = input - 2 * halo).
        return tuple(s + -(-max(0, _TARGET[cfg.ndim] - s) // p) * p
                     for s, p in zip(smallest, step, strict=True))
    if any(a < s for a, s in zip(available, smallest, strict=True)):
        raise InputError(f"test image of spatial shape {tuple(available)} is smaller than the "
                         f"network's smallest output {tuple(smallest)}")
    return tuple(s + (min(a, _LARGEST[cfg.ndim]) - s) // p * p
                 for a, s, p in zip(available, smallest, step, strict=True))


def _default_image(model: UNet, shape: tuple[int, ...]) -> np.ndarray:
    """A synthetic touching-cells image of ``shape`` with the model's channels (each channel a
    differently scaled copy, so that per-channel statistics differ)."""
    from useg.workflows.synthetic import touching_cells

    cfg = model.config
    plane = shape if cfg.ndim > 1 else (32, shape[0])
    image, _ = touching_cells(plane, rng=0)
    if cfg.ndim == 1:
        image = image[:, plane[0] // 2]
    return np.concatenate([image * (1.0 + c) for c in range(cfg.in_channels)]).astype(np.float32)


def _test_input(model: UNet, test_image: Any) -> np.ndarray:
    """The ``(C, *spatial)`` float32 test input: an image (a centred crop of ``test_image``, a
    path or an array, or the synthetic default) mirror-padded by the halo, as ``useg predict``
    reads it, so that the test output is useg's prediction of that whole image."""
    from useg.inference.predict import check_image
    from useg.io.arrays import read_tile
    from useg.io.images import read_image

    if test_image is None:
        image = _default_image(model, example_shape(model))
    else:
        name = "--test-image"
        if isinstance(test_image, str | os.PathLike):
            name = f"--test-image {test_image}"
            test_image, _ = read_image(test_image, ndim=max(model.config.ndim, 2))
        try:
            image = check_image(model, np.asarray(test_image))
            shape = example_shape(model, image.shape[1:])
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
        box = tuple(slice((a - s) // 2, (a - s) // 2 + s)
                    for a, s in zip(image.shape[1:], shape, strict=True))
        image = image[(slice(None), *box)]
    h = halo(model.config)
    padded = read_tile(image, [-n for n in h],
                       [s + 2 * n for s, n in zip(image.shape[1:], h, strict=True)])
    return np.ascontiguousarray(padded, dtype=np.float32)


def _test_output(model: UNet, image: np.ndarray) -> np.ndarray:
    """useg's probabilities for the test input in one pass (useg's predictor: the statistics of
    the whole test input, as the zoo's per-sample statistics; the network in fp32; softmax).

    For a valid network this is ``useg.predict`` of the image the test input pads, with those
    statistics (tests/test_bioimageio.py); a same-padding network's zero padding at the border
    is what the zoo runs too."""
    from useg.inference.predict import make_predictor

    stats = norm.image_stats(image, (getattr(model, "meta", None) or {}).get("normalization"))
    predictor = make_predictor(model, stats, device=torch.device("cpu"), precision="fp32")
    return predictor(image[None])[0].astype(np.float32)


def _cover(image: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the test input's region that has an output beside the probabilities (of
    class 1 for two classes, else the first three classes as red, green, blue); the middle
    slice of a volume, a line repeated for 1D."""
    from PIL import Image

    def plane(a: np.ndarray) -> np.ndarray:
        if a.ndim == 4:
            a = a[:, a.shape[1] // 2]
        if a.ndim == 2:
            a = np.repeat(a[:, None, :], max(1, a.shape[1] // 8), axis=1)
        return a

    x, p = plane(image), plane(probs)
    crop = tuple(slice((a - b) // 2, (a - b) // 2 + b)
                 for a, b in zip(x.shape[1:], p.shape[1:], strict=True))
    x = x[(slice(0, 1), *crop)][0]
    lo, hi = np.percentile(x, (1.0, 99.8))
    left = np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1)
    if p.shape[0] == 2:
        right = np.stack([p[1]] * 3, axis=-1)
    else:
        right = np.stack([p[c] if c < p.shape[0] else np.zeros_like(p[0]) for c in range(3)],
                         axis=-1)
    both = np.concatenate([np.stack([left] * 3, axis=-1), right], axis=1)
    pixels = Image.fromarray(np.round(both * 255).astype(np.uint8))
    # Covers are shown small on the zoo's website: enlarge small tests, shrink nothing.
    scale = max(1, 256 // pixels.height)
    pixels = pixels.resize((pixels.width * scale, pixels.height * scale), Image.NEAREST)
    pixels.save(path)


def _names(labels: dict[str, Any] | None, count: int, prefix: str) -> list[str]:
    """Channel names: those of the model's labels when there is one per channel, else numbered."""
    names = (labels or {}).get("classes") or (labels or {}).get("names")
    if isinstance(names, list) and len(names) == count and all(isinstance(n, str) for n in names):
        return [re.sub(r"\W+", "_", n).strip("_") or f"{prefix}{i}" for i, n in enumerate(names)]
    return [f"{prefix}{i}" for i in range(count)]


def _description_text(header: dict[str, Any], geometry: dict[str, Any]) -> str:
    cfg = header["config"]
    text = header.get("description")
    if isinstance(text, str) and text.strip():
        return " ".join(text.split())
    return (f"useg {cfg['ndim']}D U-Net ({cfg['padding']} convolutions, width {cfg['width']}, "
            f"depth {cfg['depth']}, {geometry['classes']} classes): class probabilities.")


def _readme(header: dict[str, Any], geometry: dict[str, Any], normalization: dict[str, Any],
            names: list[str], test_shape: tuple[int, ...]) -> str:
    """The package's documentation (README.md): the geometry, the normalisation and where the
    zoo's differs, the output, provenance and validation."""
    cfg = header["config"]
    axes = _spatial_axes(cfg["ndim"])
    per_axis = ", ".join(f"{a}: {m} + k * {s}" for a, m, s in
                         zip(axes, geometry["min_input_shape"], geometry["pool_step"], strict=True))
    if geometry["padding"] == "valid":
        out = ", ".join(f"{a} = input - {2 * h}" for a, h in zip(axes, geometry["halo"],
                                                                  strict=True))
        border = (f"Valid convolutions: every output pixel sees its whole context, and the "
                  f"output is smaller than the input ({out}). To predict every pixel of an "
                  f"image, mirror-pad it by the halo ({geometry['halo']}) first, as `useg "
                  f"predict` does.")
    else:
        border = ("Same padding: the output has the input's size. The network zero-pads at the "
                  "border of its input, so pixels near the border (within the receptive "
                  "radius) differ from `useg predict`, which mirror-pads the image and discards "
                  "that margin of every tile.")
    mode = normalization.get("mode", "percentile")
    if mode == "percentile":
        how = (f"percentiles {normalization.get('low', 1.0)} and "
               f"{normalization.get('high', 99.8)} of each channel map to 0 and 1 "
               f"(`scale_range` over the spatial axes of each sample)")
    elif mode == "meanstd":
        how = ("each channel minus its mean, divided by its standard deviation "
               "(`zero_mean_unit_variance` over the spatial axes of each sample)")
    elif mode == "fixed":
        how = (f"fixed per channel, (x - {normalization['offset']}) / {normalization['scale']} "
               f"(`scale_linear`)")
    else:
        how = "none: the network takes the raw intensities"
    differs = ""
    if mode in ("percentile", "meanstd"):
        differs = textwrap.dedent("""
            **Where the zoo's normalisation differs from useg's.** useg computes these
            statistics once per whole image (from a strided sample of at most 2^22 pixels per
            channel for larger images), before tiling, so that every tile is normalised alike
            and the stitched result is seamless. The zoo computes them per sample over the
            tensor that reaches the model: the whole image when a tool passes it at once (then
            the result equals useg's, up to the sampling of huge images), but each tile's own
            statistics when a tool tiles a large image, which makes tiles disagree near their
            borders and differ from `useg predict`. The zoo also adds eps = 1e-6 to the
            divisor; useg does not (and divides by 1 when the range is 0). An image
            mirror-padded by the halo for the zoo adds its mirrored border to the statistics:
            close to useg's statistics of the image, not equal. For the same result
            as useg on large images, normalise the whole image first (or predict with `useg
            predict` and the model file in `useg.json`'s header).
            """)
    cites = "\n".join(f"- {text}. doi:{doi}" for text, doi in CITATIONS)
    labels = header.get("labels") or {}
    meaning = labels.get("meaning") if isinstance(labels.get("meaning"), str) else ""
    provenance = header.get("provenance") or {}
    trained = "The model file records no training."
    if isinstance(provenance.get("trainer"), str):
        steps = f" for {header['step']} steps" if isinstance(header.get("step"), int) else ""
        trained = f"Trained by {provenance['trainer']}{steps}."
    data = labels.get("data") if isinstance(labels.get("data"), str) else ""
    test = header.get("test")
    validation = ("No held-out scores are recorded in the model file."
                  if not isinstance(test, dict) else
                  "Held-out scores recorded in the model file:\n\n```json\n"
                  + json.dumps(test, indent=2) + "\n```")
    h = geometry["halo"]
    shape = " x ".join(str(n - 2 * m) for n, m in zip(test_shape, h, strict=True))
    padded = " x ".join(map(str, test_shape))
    template = textwrap.dedent("""\
        # {title}

        {description}

        Exported by `useg export --format bioimageio` from a useg model file; `useg.json` holds
        that file's header (network configuration, normalisation, labels, provenance).

        ## Input and output

        - input `{input}`: (batch, channel, {axes}), float32, {channels}
          channel(s). Valid sizes per spatial axis: {per_axis} (k = 0, 1, 2, ...).
        - output `{output}`: (batch, channel, {axes}), float32, the probability of
          each class ({names}); they sum to 1 over the channels. {meaning}
        - {border}

        The network itself returns logits; the package's postprocessing is a softmax over the
        channel axis, so the output is the class probabilities that `useg predict` writes.
        Batch norm (if any) uses the running statistics of training.

        ## Preprocessing

        Normalisation ({mode}): {how}.
        {differs}
        ## Weights

        - `pytorch_state_dict`: the architecture is `useg.nets.unet.unet_from_config` with the
          network configuration as keyword arguments; it needs useg installed (see
          `environment.yaml`).
        - `torchscript`: a trace of the same network in eval mode (runs without useg); one
          trace takes every valid size.

        ## Training

        {trained} {data}

        ## Validation

        The package's test input is a {shape} image mirror-padded by the halo to {padded}, as
        `useg predict` reads it; its test output is useg's prediction of that image (fp32, with
        the statistics of the test input, as the zoo computes them), and the test of
        `bioimageio.core` checks that both weight formats reproduce it. {validation}

        ## How to cite

        {cites}

        ## License

        {license}, as useg.
        """)
    return template.format(
        title=header.get("name") or "useg U-Net", description=_description_text(header, geometry),
        input=_INPUT, output=_OUTPUT, axes=", ".join(axes), channels=cfg["in_channels"],
        per_axis=per_axis, names=", ".join(names), meaning=meaning, border=border, mode=mode,
        how=how, differs=differs, trained=trained, data=data, shape=shape, padded=padded,
        validation=validation, cites=cites, license=_LICENSE)


def _environment(torch_version: str) -> str:
    return textwrap.dedent(f"""\
        name: useg
        channels:
          - conda-forge
        dependencies:
          - python>=3.11
          - pytorch>={torch_version}
          - pip
          - pip:
              - useg
        """)


def export_bioimageio(model: UNet | str | os.PathLike, out: str | os.PathLike, *,
                      test_image: Any = None, authors: Sequence[str] | None = None,
                      overwrite: bool = False) -> Path:
    """Write a model as a BioImage Model Zoo package (spec 0.5 zip), validated by
    ``bioimageio.spec``.

    Parameters
    ----------
    model : UNet or path
        The network (with the header of its model file as ``model.meta``), or a model file, a run
        folder or a packaged model name (:func:`useg.nets.checkpoint.load_model`).
    out : path
        The zip to write, atomically (:func:`useg.io.files.atomic_write`); its folder is made.
    test_image : path or array, optional
        An image whose centred crop to a valid size (:func:`example_shape`) becomes the test
        input; by default a synthetic touching-cells image (:mod:`useg.workflows.synthetic`).
    authors : sequence of str, optional
        The model's authors; default ``useg contributors``.
    overwrite : bool
        Replace ``out`` when it exists (refused otherwise, before anything is done).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ConfigError
        ``bioimageio.spec`` missing (one line naming ``pip install useg[bioimageio]``), a
        network that normalises with batch statistics when predicting, a description the spec
        refuses, or an ``out`` that exists, without ``overwrite``.
    OutputError
        An ``out`` that cannot be written (:func:`useg.io.files.check_output_file`).
    ModelFileError, InputError
        A model file that is not one; a test image that is not a valid input.
    """
    sources = [] if isinstance(model, UNet) else [resolve_model(model)]
    if test_image is not None and not hasattr(test_image, "shape"):
        sources.append(test_image)
    path = check_output_file(out, overwrite=overwrite, inputs=sources)
    v = _spec()
    from pydantic import ValidationError

    if not isinstance(model, UNet):
        model = load_model(model)
    header = export_header(model)
    geometry = header["export"]
    cfg = model.config
    normalization = dict(norm.DEFAULT if header.get("normalization") is None
                         else header["normalization"])
    image = _test_input(model, test_image)
    probs = _test_output(model, image)
    in_names = _names(None, cfg.in_channels, "channel")
    class_names = _names(header.get("labels"), cfg.classes, "class")
    torch_version = torch.__version__.split("+")[0]
    make_folder(path.parent)
    with tempfile.TemporaryDirectory(prefix="useg-bioimageio-") as tmp:
        stage = Path(tmp)
        export_model(model, stage / "weights_torchscript.pt", format="torchscript")
        state = {k: t.detach().to("cpu", torch.float32 if t.is_floating_point() else t.dtype)
                 for k, t in model.state_dict().items()}
        torch.save(state, stage / "weights.pt")
        np.save(stage / "test_input.npy", image[None])
        np.save(stage / "test_output.npy", probs[None])
        # The sample tensors show the same arrays to people (the zoo wants an image format).
        tifffile.imwrite(stage / "sample_input.tif", image)
        tifffile.imwrite(stage / "sample_output.tif", probs)
        _cover(image, probs, stage / "cover.png")
        (stage / "useg.json").write_text(json.dumps(header, indent=2))
        (stage / "environment.yaml").write_text(_environment(torch_version))
        (stage / "README.md").write_text(
            _readme(header, geometry, normalization, class_names, image.shape[1:]))
        try:
            descr = _describe(v, model, header, normalization, stage, in_names, class_names,
                              authors, torch_version)
        except ValidationError as exc:
            raise ConfigError(f"the BioImage Model Zoo description was refused: "
                              f"{one_line(exc)}") from None
        from bioimageio.spec import save_bioimageio_package

        with atomic_write(path) as target:
            save_bioimageio_package(descr, output_path=target)
    return path


def _describe(v: Any, model: UNet, header: dict[str, Any], normalization: dict[str, Any],
              stage: Path, in_names: list[str], class_names: list[str],
              authors: Sequence[str] | None, torch_version: str) -> Any:
    """The validated ``ModelDescr`` of the files in ``stage``."""
    from bioimageio.spec.common import FileDescr

    cfg = model.config
    geometry = header["export"]
    axes = _spatial_axes(cfg.ndim)
    inputs = [v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(n) for n in in_names])]
    outputs = [v.BatchAxis(),
               v.ChannelAxis(channel_names=[v.Identifier(n) for n in class_names])]
    for a, low, step, h in zip(axes, geometry["min_input_shape"], geometry["pool_step"],
                               geometry["halo"], strict=True):
        inputs.append(v.SpaceInputAxis(id=v.AxisId(a),
                                       size=v.ParameterizedSize(min=low, step=step)))
        # Valid convolutions lose the halo on each side; same padding loses nothing (h = 0).
        outputs.append(v.SpaceOutputAxis(id=v.AxisId(a), size=v.SizeReference(
            tensor_id=v.TensorId(_INPUT), axis_id=v.AxisId(a), offset=-2 * h)))
    state_dict = v.PytorchStateDictWeightsDescr(
        source=stage / "weights.pt",
        architecture=v.ArchitectureFromLibraryDescr(
            callable=v.Identifier("unet_from_config"), import_from="useg.nets.unet",
            kwargs=cfg.to_dict()),
        pytorch_version=v.Version(torch_version),
        dependencies=FileDescr(source=stage / "environment.yaml"))
    torchscript = v.TorchscriptWeightsDescr(
        source=stage / "weights_torchscript.pt", pytorch_version=v.Version(torch_version),
        parent="pytorch_state_dict")
    stem = header.get("name") or Path(getattr(model, "path", "model")).stem
    name = re.sub(r"[^A-Za-z0-9_+\- ()]+", "-", f"useg {stem}")[:128]
    tags = ["useg", "unet", f"{cfg.ndim}d", "segmentation", "semantic-segmentation", "pytorch"]
    if cfg.ndim == 3:
        tags.append("3d-unet")
    return v.ModelDescr(
        name=name,
        description=_description_text(header, geometry)[:1024],
        authors=[v.Author(name=n) for n in (authors or _AUTHORS)],
        cite=[v.CiteEntry(text=text, doi=v.Doi(doi)) for text, doi in CITATIONS],
        license=v.LicenseId(_LICENSE),
        documentation=FileDescr(source=stage / "README.md"),
        covers=[FileDescr(source=stage / "cover.png")],
        tags=tags,
        attachments=[FileDescr(source=stage / "useg.json")],
        inputs=[v.InputTensorDescr(
            id=v.TensorId(_INPUT), axes=inputs, test_tensor=FileDescr(
                source=stage / "test_input.npy"),
            sample_tensor=FileDescr(source=stage / "sample_input.tif"),
            data=v.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=preprocessing(normalization, cfg.ndim, cfg.in_channels))],
        outputs=[v.OutputTensorDescr(
            id=v.TensorId(_OUTPUT), axes=outputs, test_tensor=FileDescr(
                source=stage / "test_output.npy"),
            sample_tensor=FileDescr(source=stage / "sample_output.tif"),
            data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            postprocessing=[v.SoftmaxDescr(kwargs=v.SoftmaxKwargs(axis=v.AxisId("channel")))])],
        weights=v.WeightsDescr(pytorch_state_dict=state_dict, torchscript=torchscript),
    )
