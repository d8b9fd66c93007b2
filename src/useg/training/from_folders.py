"""Training from folders of image and label files: the engine of ``useg train``, and the one
builder of training configurations.

:func:`make_config` builds a :class:`~useg.training.config.TrainConfig` for data of a dimension:
the paper's network for it (``ronneberger2015`` in 2D, ``cicek2016`` in 3D), the pooling chosen
from the voxel spacing (:func:`useg.nets.geometry.anisotropic_pools`), the paper's tile and the
label mode of the dimension, or a recipe's network, tile and optimizer
(:mod:`useg.training.recipes`) with the settings given explicitly over it. ``useg train``,
``useg densify``, :func:`useg.workflows.densify.densify` and the demo all build theirs with it;
:func:`build_config` maps the command-line options
(:class:`~useg.training.options.TrainOptions`) onto it.

:func:`train_from_folders` reads the files, builds the configuration (or continues a saved run,
refusing options that differ from it: :func:`resumed_config`) and trains
(:func:`useg.training.loop.train`). :func:`labels_record` is what a run records about its labels
and data files, :func:`recorded_slices` the annotated slices it recorded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from useg import io
from useg.device import resolve_device
from useg.errors import ConfigError, InputError
from useg.io import normalize as norm
from useg.nets.config import PRESETS, UNetConfig
from useg.nets.geometry import anisotropic_pools, min_input_shape, valid_input_shape
from useg.training.config import RESUMABLE, TrainConfig
from useg.training.loop import train
from useg.training.options import (
    NET_OPTIONS,
    RECIPE_OPTIONS,
    TrainOptions,
    parse_pool,
    parse_slices,
)
from useg.training.recipes import choose_recipe, recipe_settings
from useg.training.run_folder import CONFIG, read_config
from useg.training.samples import MODE_CLASSES, NO_BORDER_WEIGHT_MODES, Sample, load_pairs

__all__ = [
    "build_config",
    "check_resume_options",
    "default_label_mode",
    "default_preset",
    "default_tile",
    "labels_record",
    "make_config",
    "recorded_slices",
    "resumed_config",
    "saved_run",
    "train_from_folders",
]


# ----------------------------------------------------------------------------------------------
# The configuration builder


def default_preset(ndim: int) -> str:
    """The paper's network for ``ndim``-D data: ``cicek2016`` in 3D, else ``ronneberger2015``."""
    return "cicek2016" if ndim == 3 else "ronneberger2015"


def default_label_mode(ndim: int) -> str:
    """What labels mean unless told: instance boundaries (EM membranes) in 3D, else binary."""
    return "boundary" if ndim == 3 else "binary"


def default_tile(ndim: int) -> list[int]:
    """The papers' input tiles: 116x132x132 in 3D, 572 per axis otherwise."""
    return [116, 132, 132] if ndim == 3 else [572] * ndim


def make_config(
    ndim: int,
    *,
    in_channels: int = 1,
    classes: int | None = None,
    label_mode: str | None = None,
    preset: str | None = None,
    pool: Sequence[Sequence[int]] | None = None,
    spacing: Sequence[float] | None = None,
    file_spacing: Sequence[float] | None = None,
    tile: Sequence[int] | int | None = None,
    recipe: str | None = None,
    init: str | os.PathLike | None = None,
    **options: Any,
) -> TrainConfig:
    """The training configuration for ``ndim``-D data.

    Parameters
    ----------
    ndim : int
        Spatial dimensions of the network.
    in_channels : int
        Channels of the images.
    classes : int, optional
        Output classes; default :data:`useg.training.samples.MODE_CLASSES` of the label mode
        (3 for ``three_class``, else 2), or the preset's for label mode ``classes``.
    label_mode : str, optional
        Meaning of the labels (:data:`useg.training.samples.LABEL_MODES`); default
        :func:`default_label_mode`.
    preset : str, optional
        Network preset; default :func:`default_preset`, which takes ``ndim``. A preset given
        by name must be of ``ndim`` dimensions.
    pool : sequence, optional
        Pooling factors per level and axis; they set the depth. Without them, a ``spacing`` (or
        ``file_spacing``) of anisotropic voxels chooses them (:func:`anisotropic_pools`).
    spacing : sequence of float, optional
        Voxel size ((Z,) Y, X) that overrides the files' and is recorded with the run and in the
        model file.
    file_spacing : sequence of float, optional
        The voxel size the data files state (not recorded: the files keep it).
    tile : int or sequence, optional
        Input tile (1 or ``ndim`` sizes; default the recipe's, else :func:`default_tile`), at
        least the network's smallest valid input.
    recipe : str, optional
        A recipe (:data:`useg.training.recipes.RECIPES`), or ``"auto"`` (``cpu-fast`` when
        ``device`` is, or resolves to, the CPU, else ``gpu-paper``): its settings replace the
        defaults, and the settings given here (not None) replace its (an ``augment`` dict
        replaces the recipe's option by option). A recipe's learning rate
        goes with its optimizer: another ``optimizer`` without ``lr`` takes its own default.
        The configuration records the recipe (``recipe``). None: no recipe, the papers'
        settings.
    init : path or str, optional
        Fine-tuning: a model (file, run folder or packaged name) whose network, normalisation
        and (by default) label mode the run takes, and whose weights it starts from
        (:func:`useg.training.loop.train`); the recipe's network settings do not apply, and
        network options given with it are refused. Recorded as ``init``.
    **options
        :class:`~useg.training.config.TrainConfig` fields, or :class:`~useg.nets.UNetConfig`
        fields (``width``, ``depth``, ``padding``, ``batch_stats``...) that override the preset.

    Examples
    --------
    >>> cfg = make_config(3, spacing=(50, 4, 4), width=8, depth=2, iterations=10)
    >>> cfg.net["pool"], cfg.label_mode, cfg.tile
    ([[1, 2, 2], [1, 2, 2]], 'boundary', [116, 132, 132])
    >>> cfg = make_config(2, recipe="cpu-fast", iterations=300, device="cpu")
    >>> cfg.net["width"], cfg.optimizer, cfg.iterations, cfg.recipe["name"]
    (16, 'adam', 300, 'cpu-fast')
    """
    # None stands for "not given" in the settings a recipe sets.
    options = {k: v for k, v in options.items() if v is not None or k not in RECIPE_OPTIONS}
    start = None
    if init is not None:
        given = [k for k in NET_OPTIONS if options.get(k) is not None]
        given += [k for k, v in (("preset", preset), ("pool", pool)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in given)}: the "
                              f"network comes from the --init model {init}; leave them out")
        start = _start_model(init)
    momentum_given = options.get("momentum") is not None
    if pool is not None and options.get("depth") not in (None, len(pool)):
        # The pooling sets the depth (a recipe's depth yields to it); a given one must agree.
        raise ConfigError(f"--depth {options['depth']} does not match the {len(pool)} pooling "
                          "level(s) of --pool; give one of the two")
    if recipe is not None:
        tile, options = _with_recipe(recipe, ndim, tile, options)
    optimizer = options.get("optimizer", TrainConfig.optimizer)
    if momentum_given and optimizer != "sgd":
        raise ConfigError(f"--momentum is a setting of --optimizer sgd; the run's optimizer is "
                          f"{optimizer}, which has none: leave it out or add --optimizer sgd")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    net_options = {k: options.pop(k) for k in list(options) if k not in known}
    if start is not None:
        path, header = start
        label_mode = label_mode or (header.get("labels") or {}).get("mode")
    label_mode = label_mode or default_label_mode(ndim)
    if start is None:
        net = _network(
            ndim, preset, label_mode, in_channels=in_channels, classes=classes, pool=pool,
            voxels=spacing if spacing is not None else file_spacing, **net_options,
        )
    else:
        net = _network_of_model(path, header, ndim, label_mode, in_channels, classes)
        options.setdefault("normalization", header.get("normalization") or norm.DEFAULT)
        options["init"] = {"model": str(init), "file": str(path)}
    d = net.to_dict()
    d["pool"] = [list(level) for level in d["pool"]] if d["pool"] is not None else None
    return TrainConfig(
        net=d, tile=_input_tile(tile, net), label_mode=label_mode,
        spacing=[float(s) for s in spacing] if spacing is not None else None, **options,
    )


def _with_recipe(
    recipe: str, ndim: int, tile: Sequence[int] | int | None, options: dict[str, Any]
) -> tuple[Sequence[int] | int | None, dict[str, Any]]:
    """The tile and options of :func:`make_config` with the settings of ``recipe`` (a name or
    ``"auto"``) under those given, and the record of the recipe in ``options["recipe"]``."""
    name, why = choose_recipe(recipe, resolve_device(options.get("device", "auto")).type)
    settings = recipe_settings(name, ndim)
    given = dict(options) if tile is None else {**options, "tile": tile}
    if "optimizer" in given and given["optimizer"] != settings.get("optimizer"):
        settings.pop("lr", None)  # the recipe's learning rate is for its own optimizer
    merged = {**settings, **given}
    if isinstance(settings.get("augment"), dict) and isinstance(given.get("augment"), dict):
        # e.g. --no-elastic keeps the rest of the recipe's augmentation (its resampling)
        merged["augment"] = {**settings["augment"], **given["augment"]}
    merged["recipe"] = {"name": name, "why": why,
                        "given": sorted(k for k in settings if k in given)}
    return merged.pop("tile", None), merged


def _network(
    ndim: int, preset: str | None, label_mode: str, *, in_channels: int, classes: int | None,
    pool: Sequence[Sequence[int]] | None, voxels: Sequence[float] | None, **net_options: Any,
) -> UNetConfig:
    """The preset's network for the data, its pooling chosen from the voxel size (see
    :func:`make_config`)."""
    name = preset or default_preset(ndim)
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    values = dict(PRESETS[name])
    if preset is not None and values["ndim"] != ndim:
        raise ConfigError(f"preset {name} is {values['ndim']}D but the data are {ndim}D")
    if classes is None:
        classes = MODE_CLASSES.get(label_mode, values["classes"])
    values.update(ndim=ndim, in_channels=in_channels, classes=classes, **net_options)
    if pool is None and values.get("pool") is None and voxels is not None:
        levels = anisotropic_pools(tuple(voxels)[-ndim:], values["depth"])
        if any(f != 2 for level in levels for f in level):
            pool = levels
    if pool is not None:
        values["pool"] = [list(level) for level in pool]
        values["depth"] = len(pool)
    return UNetConfig(**values)


def _start_model(init: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The model file ``init`` names and its checked header."""
    from useg.nets.checkpoint import model_info, resolve_model

    path = resolve_model(init)
    return path, model_info(path)


def _network_of_model(
    path: Path, header: Mapping[str, Any], ndim: int, label_mode: str, in_channels: int,
    classes: int | None,
) -> UNetConfig:
    """The network of the model ``path`` (its checked ``header``), refused in one line when the
    data or the label mode cannot use it."""
    net = UNetConfig.from_dict(header["config"])
    if net.ndim != ndim:
        raise ConfigError(f"{path}: a {net.ndim}D network; the data are {ndim}D")
    if net.in_channels != in_channels:
        raise ConfigError(f"{path}: the network takes {net.in_channels} channel(s); the images "
                          f"have {in_channels}")
    wanted = classes or MODE_CLASSES.get(label_mode, net.classes)
    if net.classes != wanted:
        raise ConfigError(f"{path}: the network has {net.classes} output classes; label mode "
                          f"{label_mode!r} needs {wanted}")
    return net


def _input_tile(tile: Sequence[int] | int | None, net: UNetConfig) -> list[int]:
    """``tile`` as ``net.ndim`` sizes (default :func:`default_tile`), each at least the
    network's smallest valid input."""
    ndim = net.ndim
    if tile is None:
        tile = default_tile(ndim)
    elif isinstance(tile, int):
        tile = [tile] * ndim
    elif len(tile) == 1:
        tile = list(tile) * ndim
    elif len(tile) != ndim:
        raise ConfigError(f"tile needs 1 or {ndim} sizes, got {list(tile)}")
    return [max(int(t), m) for t, m in zip(tile, min_input_shape(net), strict=True)]


def build_config(
    options: Any, ndim: int, in_channels: int, spacing: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The training configuration that command-line options ask for, as
    :class:`~useg.training.config.TrainConfig` keyword arguments (:func:`make_config`).

    ``options`` has the attributes of :class:`~useg.training.options.TrainOptions` (an argparse
    namespace of ``useg train`` or ``useg densify`` does). ``spacing`` is the voxel size the
    data files state; ``--spacing`` overrides it. Without ``--pool``, anisotropic spacing
    chooses the pooling per level (:func:`useg.nets.geometry.anisotropic_pools`).
    """
    override = getattr(options, "spacing", None)
    # A 2D network on the slices of stacks takes the stacks' three values.
    if override is not None and len(override) not in ((3,) if ndim == 3 else (ndim, ndim + 1)):
        raise ConfigError(f"--spacing needs {ndim} values for {ndim}D data, got {len(override)}")
    net = {k: getattr(options, k) for k in NET_OPTIONS if getattr(options, k, None) is not None}
    # The recipe's settings unless given (None: not given).
    recipe = {k: getattr(options, k) for k in RECIPE_OPTIONS if k not in NET_OPTIONS}
    cfg = make_config(
        ndim, in_channels=in_channels, label_mode=options.label_mode, preset=options.preset,
        pool=parse_pool(options.pool, ndim), spacing=override, file_spacing=spacing,
        recipe=getattr(options, "recipe", "auto"), init=getattr(options, "init", None),
        **recipe,
        time_budget=getattr(options, "time_budget", None), batch_size=options.batch_size,
        weight_decay=options.weight_decay,
        precision=options.precision, grad_clip=options.grad_clip,
        # Not given: the recipe's Dice weight, else none.
        **({"dice_weight": options.dice} if options.dice is not None else {}),
        # Neither flag given: the recipe's augmentation, else the default (all of it).
        **({"augment": None if options.no_augment else {"elastic": False}}
           if options.no_augment or options.no_elastic else {}),
        unlabeled=options.unlabeled, boundary_width=options.boundary_width,
        # Not given: the recipe's border weight amplitude, else the paper's.
        **({"w0": options.w0} if options.w0 is not None else {}),
        sigma=options.sigma,
        # Not given: the recipe's class balance, else on (the paper's w_c).
        **({"class_balance": False} if options.no_class_balance else {}),
        val_every=options.val_every, checkpoint_every=options.checkpoint_every,
        log_every=options.log_every, seed=options.seed, device=options.device, **net,
    )
    return dataclasses.asdict(cfg)


def refuse_options_without_effect(cfg: TrainConfig, given: Sequence[tuple[str, str]]) -> None:
    """Raise :class:`ConfigError` for an option given explicitly that the new run ``cfg`` would
    ignore: ``--batch-stats`` on a network without batch norm, ``--w0`` or ``--sigma`` in a
    label mode that builds no border weights (``boundary`` and ``classes``), ``--boundary-width``
    in one without a boundary class (all but ``boundary`` and ``three_class``)."""
    flags = dict(given)
    net_norm = UNetConfig.from_dict(cfg.net).norm
    if "batch_stats" in flags and net_norm != "batch":
        raise ConfigError(f"{flags['batch_stats']}: this network has no batch norm (norm "
                          f"{net_norm!r}); it takes effect with --norm batch")
    for dest in ("w0", "sigma"):
        if dest in flags and cfg.label_mode in NO_BORDER_WEIGHT_MODES:
            raise ConfigError(f"{flags[dest]}: --label-mode {cfg.label_mode} builds no border "
                              "weights between objects; leave --w0 and --sigma out")
    if "boundary_width" in flags and cfg.label_mode not in ("boundary", "three_class"):
        raise ConfigError(f"{flags['boundary_width']}: --label-mode {cfg.label_mode} draws no "
                          "boundary class; it takes effect with --label-mode boundary or "
                          "three_class")


# ----------------------------------------------------------------------------------------------
# Resuming: the options given, and whether they agree with the saved run


def saved_run(out: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """The saved configuration of the run in ``out``, its recorded data paths, and the file."""
    saved = read_config(out)
    return saved, (saved.get("labels") or {}).get("data") or {}, Path(out) / CONFIG


# Options a resumed run honours: they change how the run is executed or how long it is, not
# what each step computes (iterations and time_budget: see useg.training.loop.train).
_RESUME_FREE = frozenset({"iterations", "time_budget", "workers", "device", "quiet", "resume",
                          "out"})
# Stands for the saved value of an option that has no counterpart in the saved run.
_NO_COUNTERPART = object()


def _show(value: Any) -> str:
    if value is None:
        return "none"
    return value if isinstance(value, str) else json.dumps(value)


def _resume_values(dest: str, value: Any, saved: dict[str, Any]) -> tuple:
    """(what the option asks for, what the saved run has) in comparable form."""
    net = saved.get("net") or {}
    ndim = int(net.get("ndim", 2))
    data = (saved.get("labels") or {}).get("data") or {}
    same_key = {"batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
                "precision", "grad_clip", "label_mode", "unlabeled", "boundary_width", "w0",
                "sigma", "val_every", "checkpoint_every", "log_every", "seed"}
    if dest == "precision" and value == "auto":
        return saved.get(dest), saved.get(dest)  # the run keeps the precision it resolved to
    if dest == "recipe":
        recorded = (saved.get("recipe") or {}).get("name")
        # auto stands for whichever recipe the run was built from
        return (recorded if value == "auto" else value), recorded
    if dest in same_key:
        return value, saved.get(dest)
    if dest in NET_OPTIONS:
        return value, net.get(dest)
    if dest == "dice":
        return value, saved.get("dice_weight")
    if dest == "no_class_balance":
        return "off", "on" if saved.get("class_balance", True) else "off"
    augment = saved.get("augment")
    if dest == "no_augment":
        return "off", "on" if augment is not None else "off"
    if dest == "no_elastic":
        return "off", "on" if augment is not None and augment.get("elastic", True) else "off"
    if dest == "spacing":
        return [float(v) for v in value], saved.get("spacing")
    if dest == "pool":
        return parse_pool(value, ndim), net.get("pool")
    if dest == "slices":
        return json.loads(json.dumps(parse_slices(value, ndim))), data.get("slices")
    if dest == "tile":
        tile = list(value) * ndim if len(value) == 1 else list(value)
        recorded = saved.get("tile")
        if tile != recorded and len(tile) == ndim:
            # The run saved its tile rounded to a valid one: the value that was given rounds
            # to it too.
            rounded = list(valid_input_shape(UNetConfig.from_dict(net), tile, mode="nearest"))
            tile = recorded if rounded == recorded else tile
        return tile, recorded
    if dest == "preset":
        # Only the options that override a preset's values may differ from the preset's.
        kept = ("in_channels", "classes", "width", "depth", "padding", "norm", "dropout",
                "batch_stats", "pool")
        recorded = next(
            (name for name, values in PRESETS.items()
             if values["ndim"] == ndim and UNetConfig(
                 **{**values, **{k: net[k] for k in kept if k in net}}).to_dict() == net),
            "another network",
        )
        return value, recorded
    if dest in ("images", "labels", "val_images", "val_labels"):
        recorded = data.get(dest)
        same = recorded is not None and Path(value).resolve() == Path(recorded).resolve()
        return (recorded if same else str(value)), recorded
    return value, _NO_COUNTERPART


def check_resume_options(
    given: Sequence[tuple[str, str]], values: Mapping[str, Any], saved: dict[str, Any],
    config_path: Path, free: Collection[str] = frozenset(),
) -> None:
    """Refuse, naming the option, an option given to a resumed run that differs from the saved
    run.

    ``given`` lists the options given explicitly as (name, flag) pairs, ``values`` their values
    by name; ``free`` names more options the caller handles itself.
    """
    for dest, flag in given:
        if dest in _RESUME_FREE or dest in free:
            continue
        wanted, recorded = _resume_values(dest, values[dest], saved)
        if recorded is _NO_COUNTERPART:
            raise ConfigError(f"{config_path}: {flag} cannot change when resuming; leave it out, "
                              "or start a new run with another --out")
        if wanted != recorded:
            raise ConfigError(
                f"{config_path}: {flag} {_show(wanted)} differs from the saved run's "
                f"{_show(recorded)}; --resume continues the run as saved (leave {flag} out, or "
                "start a new run with another --out)"
            )


def resumed_config(
    saved: dict[str, Any], given: Sequence[tuple[str, str]], values: Mapping[str, Any],
    config_path: Path, free: Collection[str] = frozenset(),
) -> TrainConfig:
    """The saved run's :class:`~useg.training.config.TrainConfig` with the options a resumed run
    honours (:data:`~useg.training.config.RESUMABLE`) taken from ``values`` where ``given``
    names them, after refusing the others that differ from the saved run
    (:func:`check_resume_options`, with ``config_path`` and ``free``)."""
    check_resume_options(given, values, saved, config_path, free)
    cfg = TrainConfig.from_dict(saved)
    for dest, _ in given:
        if dest in RESUMABLE:
            setattr(cfg, dest, values[dest])
    return cfg


# ----------------------------------------------------------------------------------------------
# What a run records about its data


def labels_record(mode: str, classes: int, data: dict[str, Any]) -> dict[str, Any]:
    """The ``labels`` of a :class:`~useg.training.config.TrainConfig` (kept in the model file):
    the label mode, a name per class and the data files (``data``) the run trains on."""
    if mode == "boundary":
        names = ["interior", "boundary"]
    elif mode == "three_class":
        names = ["background", "interior", "boundary"]
    elif mode == "classes":
        names = [f"class {i}" for i in range(classes)]
    else:
        names = ["background", "foreground"]
    return {"mode": mode, "classes": names, "data": data}


def recorded_slices(data: Mapping[str, Any]) -> dict[int, list[int]] | None:
    """The annotated slices a run's data record names (axis -> indices), if sparse."""
    slices = data.get("slices")
    return {int(k): v for k, v in slices.items()} if slices else None


# ----------------------------------------------------------------------------------------------
# useg train


def train_from_folders(
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    val_images: str | os.PathLike | None = None,
    val_labels: str | os.PathLike | None = None,
    options: TrainOptions | None = None,
    resume: bool = False,
    given: Sequence[tuple[str, str]] = (),
    progress: bool = True,
    say: Callable[[str], None] | None = None,
    started: float | None = None,
    command: Sequence[str] | None = None,
) -> Path:
    """Train a U-Net on image and label files matched by name (``useg train``); returns the path
    of the best model file (the last one without validation data).

    Parameters
    ----------
    out : path
        Run folder (:mod:`useg.training.run_folder`).
    images, labels : path
        Folders (or files) of training images and labels, paired by name stem; 2D images, or
        stacks (a 3D network, or a 2D one with ``options.preset="ronneberger2015"`` on their
        slices). Not needed to resume: the run recorded them.
    val_images, val_labels : path, optional
        Validation images and labels (together or not at all).
    options : TrainOptions, optional
        The network and training options (defaults:
        :class:`~useg.training.options.TrainOptions`).
    resume : bool
        Continue the run in ``out`` with its saved configuration and data.
    given : sequence of (str, str)
        The options given explicitly, as (name, flag) pairs: with ``resume``, those that
        differ from the saved run are refused, except ``iterations`` (which extends the run),
        ``time_budget`` (a budget for the rest of the run), ``workers`` and ``device``.
    progress : bool
        Show a progress bar.
    say : callable, optional
        Receives the run's one-line notes (:func:`useg.training.loop.train`), e.g. ``print``.
    started : float, optional
        The :func:`time.perf_counter` value a time budget counts from (default: the call of
        this function; ``useg train``: the start of the command).
    command : sequence of str, optional
        The command line that started a new run (its words), recorded in ``config.json``
        (``command``); a resumed run keeps the one it recorded.
    """
    started = time.perf_counter() if started is None else started
    out = io.check_output_folder(out)
    options = options if options is not None else TrainOptions()
    paths = {"images": images, "labels": labels, "val_images": val_images,
             "val_labels": val_labels}
    if resume:
        saved, data, config_path = saved_run(out)
        if not data:
            raise InputError(f"{config_path}: no data paths recorded; cannot resume")
        if "volume" in data and "images" not in data:
            raise InputError(f"{config_path}: a 'useg densify' run; resume it with useg "
                             f"densify --resume --out {out}")
        cfg = resumed_config(saved, given, {**dataclasses.asdict(options), **paths}, config_path)
    else:
        cfg = _new_run_config(options, **paths)
        refuse_options_without_effect(cfg, given)
        cfg.command = list(command) if command is not None else None
    samples, val = _training_samples(cfg)
    return train(cfg, samples, out, val_samples=val, resume=resume, progress=progress, say=say,
                 started=started)


def _new_run_config(
    options: TrainOptions, images: str | os.PathLike | None, labels: str | os.PathLike | None,
    val_images: str | os.PathLike | None, val_labels: str | os.PathLike | None,
) -> TrainConfig:
    """The configuration of a new ``useg train`` run, from the options and the first image."""
    if images is None or labels is None:
        raise ConfigError("--images and --labels are required (or --resume)")
    for p in (images, labels, val_images, val_labels):
        if p is not None and not Path(p).exists():
            raise InputError(f"{p}: no such file or folder")
    if (val_images is None) != (val_labels is None):
        raise ConfigError("--val-images and --val-labels go together")
    first, first_meta = io.read_image(io.list_images(images)[0])
    ndim = first.ndim - 1
    if ndim == 3 and options.preset == "ronneberger2015":
        ndim = 2  # a 2D network trained on the slices of stacks
    kwargs = build_config(options, ndim, first.shape[0], first_meta.get("spacing"))
    # Absolute: a run resumed from another working directory must read the same files.
    data = {
        "images": str(Path(images).resolve()), "labels": str(Path(labels).resolve()),
        "val_images": str(Path(val_images).resolve()) if val_images else None,
        "val_labels": str(Path(val_labels).resolve()) if val_labels else None,
        "slices": parse_slices(options.slices, ndim),
    }
    kwargs["labels"] = labels_record(kwargs["label_mode"], kwargs["net"]["classes"], data)
    return TrainConfig(**kwargs)


def _training_samples(cfg: TrainConfig) -> tuple[list[Sample], list[Sample] | None]:
    """The training and validation samples of the files ``cfg`` records."""
    data, net = cfg.labels["data"], cfg.net
    opts = cfg.sample_options(recorded_slices(data))
    samples = load_pairs(data["images"], data["labels"], ndim=net["ndim"],
                         in_channels=net["in_channels"], spacing=cfg.spacing, **opts)
    val = None
    if data.get("val_images"):
        val = load_pairs(data["val_images"], data["val_labels"], ndim=net["ndim"],
                         in_channels=net["in_channels"], spacing=cfg.spacing,
                         **{**opts, "slices": None})
    return samples, val
