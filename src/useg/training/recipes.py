"""Named training recipes: what ``useg train --recipe NAME`` sets, as plain data.

A recipe gives the network's size, the tile, the optimizer, the learning-rate schedule, the
number of steps and, where it was chosen with other augmentation than the default, that
augmentation (and with its tiles made another way, the loader workers: ``workers``); an option
given explicitly overrides its one setting, and every setting a recipe leaves out keeps its
default (:class:`~useg.training.config.TrainConfig`). ``auto``, the default of ``useg train``
and ``useg densify``, picks ``cpu-fast`` for a run on the CPU and ``gpu-paper`` for a run on a
CUDA GPU, and says which and why.

``gpu-paper`` is the papers' configuration, which is also what
:class:`~useg.training.config.TrainConfig` defaults to (one source: :data:`PAPER`). Needs nothing
but the standard library, so that the command line reads it without importing torch.
"""

from __future__ import annotations

from typing import Any

from useg.errors import check_choice

__all__ = ["PAPER", "RECIPES", "RECIPE_CHOICES", "augment_words", "choose_recipe",
           "recipe_settings"]

# Per recipe: "about" (one line), "settings" (make_config keywords, any dimension), "by_ndim"
# (keywords for 2D and 3D networks) and "measured" (what a run took, and where: the figure is a
# measurement or says that there is none).
RECIPES: dict[str, dict[str, Any]] = {
    "cpu-fast": {
        "about": "a small U-Net that trains in minutes on two CPU cores",
        "settings": {"optimizer": "adam", "lr": 1e-3, "schedule": "poly"},
        "by_ndim": {
            # The 2D U-Net of the paper (valid padding, dropout) at a quarter of its width and
            # one pooling less (the network of bench/nuclei.py).
            2: {"width": 16, "depth": 3, "tile": [252, 252], "iterations": 4000},
            # The CPU configuration of bench/sparse3d.py (docs/sparse3d.md), with fewer steps
            # than its sparse-slice runs.
            3: {"width": 8, "depth": 2, "padding": "same", "tile": [44, 44, 44],
                "iterations": 600},
        },
        # bench/results/recipes.json (bench/recipes.py): the whole command, quiet machine.
        "measured": {
            2: "6.6 min wall for the 4000 steps with 2 validation images every 200 steps (6 "
               "synthetic 512x512 training images; useg train --recipe cpu-fast) on an AMD EPYC "
               "with 2 cores, AVX2 and no bf16 (fp32), 2 torch threads, 1 loader worker; the "
               "run's own estimate after its first steps: 0.110 s/step",
            3: "3.1 min wall for the 600 steps with a validation volume every 200 steps (4 "
               "synthetic 64x128x128 training volumes) on the same CPU and threads; estimate "
               "after the first steps: 0.280 s/step",
        },
    },
    "cpu-best": {
        "about": "the CPU recipes chosen for accuracy on validation data: EM membranes in 2D, "
                 "sparse slice annotations in 3D",
        "settings": {"optimizer": "adam", "lr": 1e-3, "schedule": "poly"},
        "by_ndim": {
            # bench/isbi2012_recipe.py's choice on ISBI 2012 validation slices (3 seeds per
            # candidate): the paper's 2D layout at half its width, depth 3, one 316x316 tile per
            # step, the paper's border weight term at w0 3 instead of 10 and without its class
            # balance (w_c), the default augmentation (elastic deformation) resampling the
            # image bicubically, and a soft Dice term of weight 0.5 beside the weighted cross
            # entropy, 4500 steps (dice-wide-w0-3-flat-cubic-4500-half-dice, within the seeds'
            # spread of the same with Dice weight 1; before them the same with 3000 steps, with
            # bilinear resampling, with the class balance, with w0 10 as well, and at width 16).
            2: {"width": 32, "depth": 3, "tile": [316, 316], "iterations": 4500,
                "dice_weight": 0.5, "w0": 3.0, "class_balance": False,
                "augment": {"interpolation": "cubic"}},
            # bench/flyem_recipe.py's choice on a validation crop of FlyEM with the paper's
            # (5,5,3) annotated slices (long-15k): cpu-fast's 3D network and tile, trained for
            # longer, its tiles made in the training process, as the runs it was chosen by were
            # (before it longest, the same with 12000 steps, docs/sparse3d.md).
            3: {"width": 8, "depth": 2, "padding": "same", "tile": [44, 44, 44],
                "iterations": 15000, "augment": None, "workers": 0},
        },
        "measured": {
            2: "15.1 min wall for the 4500 steps with 2 validation images (6 synthetic "
               "512x512 training images; useg train --recipe cpu-best, bench/recipes.py) on an "
               "AMD EPYC with 2 cores, AVX-512 and bf16 instructions (--precision auto: bf16), "
               "2 torch threads, quiet; in fp32 on the same CPU kind 31.6 min of training on "
               "ISBI 2012 on two threads, quiet, and 56.1 min on one thread with another run on "
               "the other core (bench/isbi2012_recipe.py, seeds 2 and 0, 1); not measured on an "
               "AVX2-only CPU",
            3: "45.8 min of training for the 15000 steps on two torch threads of an AMD EPYC "
               "with AVX-512 in fp32, no loader worker, mean of 3 seeds (bench/flyem_recipe.py,"
               " validation crop; 44.8 min for a test-crop seed on a quiet machine); there "
               "--precision auto trains in bf16: 26.5 min (one run, its validation score within"
               " the fp32 runs' range); as a whole useg train --recipe cpu-best run in bf16 (4 "
               "synthetic 64x128x128 training volumes, a validation volume; bench/recipes.py), "
               "25.3 min wall on 2 threads, quiet."
               " Not measured on an AVX2-only CPU (fp32), where this network's 12000 steps took "
               "42.8-46.3 min (3 seeds), so about 54-58 min estimated for 15000; "
               "--time-budget 60m caps a run at the budget",
        },
    },
    "gpu-paper": {
        "about": "the papers' network, tile and optimizer (SGD, momentum 0.99)",
        # The presets' networks and the papers' tiles (572x572; 116x132x132) are the defaults.
        "settings": {"optimizer": "sgd", "momentum": 0.99, "schedule": "poly",
                     "iterations": 2000},
        "by_ndim": {},
        "measured": {
            2: "not measured on a GPU; on the CPU of cpu-fast (2 threads, fp32, quiet) 8 steps "
               "ran at 8.34 s/step: about 4.6 h for the 2000 steps",
            3: "not measured on a GPU; on that CPU 8 steps ran at 20.9 s/step: about 11.6 h for "
               "the 2000 steps",
        },
    },
}
RECIPE_CHOICES = ("auto", *RECIPES)

# The papers' training settings: TrainConfig's defaults.
PAPER: dict[str, Any] = RECIPES["gpu-paper"]["settings"]


def choose_recipe(name: str, device_type: str) -> tuple[str, str]:
    """The recipe ``name`` stands for on a device of type ``device_type`` (``"cpu"`` or
    ``"cuda"``), and why, in a few words.

    Examples
    --------
    >>> choose_recipe("auto", "cpu")[0], choose_recipe("auto", "cuda")[0]
    ('cpu-fast', 'gpu-paper')
    >>> choose_recipe("gpu-paper", "cpu")
    ('gpu-paper', 'as asked')
    """
    check_choice("recipe", name, RECIPE_CHOICES)
    if name != "auto":
        return name, "as asked"
    if device_type == "cuda":
        return "gpu-paper", "auto: training on a CUDA GPU"
    return "cpu-fast", ("auto: training on the CPU, no CUDA GPU; --recipe gpu-paper trains the "
                        "paper's network, for hours")


def recipe_settings(name: str, ndim: int) -> dict[str, Any]:
    """The :func:`~useg.training.from_folders.make_config` keywords of recipe ``name`` for an
    ``ndim``-D network.

    Examples
    --------
    >>> s = recipe_settings("cpu-fast", 2)
    >>> s["width"], s["depth"], s["optimizer"], s["tile"]
    (16, 3, 'adam', [252, 252])
    """
    recipe = RECIPES[check_choice("recipe", name, tuple(RECIPES))]
    settings = {**recipe["settings"], **recipe["by_ndim"].get(ndim, {})}
    return {k: list(v) if isinstance(v, list) else v for k, v in settings.items()}


def augment_words(augment: dict[str, Any] | None) -> str:
    """How an ``augment`` setting departs from the default augmentation, in the words the
    recipe line and ``useg train --help`` use ("" for the default, ``{}``).

    Examples
    --------
    >>> augment_words(None), augment_words({"elastic": False, "interpolation": "cubic"})
    (', no augmentation', ', no elastic deformation, bicubic resampling')
    """
    if augment is None:
        return ", no augmentation"
    words = ", no elastic deformation" if augment.get("elastic", True) is False else ""
    return words + (", bicubic resampling" if augment.get("interpolation") == "cubic" else "")
