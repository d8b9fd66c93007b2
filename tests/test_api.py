"""The public API of the package: every name in ``useg.__all__`` stays what it is.

Importing a submodule binds it as an attribute of its package; no public name is a submodule's
(the function ``useg.predict`` is defined in ``useg.inference.predict``), and importing the
submodules in any order must leave the public names alone. Each case runs in a fresh
interpreter, because what matters is the order of first imports.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Runs in the child: every public name, looked up twice, is a function or class of that name.
CHECK = textwrap.dedent(
    """
    import types

    import useg

    def check(when):
        assert useg.__all__, "empty __all__"
        for name in useg.__all__:
            for _ in range(2):
                obj = getattr(useg, name)
                assert not isinstance(obj, types.ModuleType), f"{when}: useg.{name} is {obj!r}"
                assert callable(obj) and obj.__name__ == name, f"{when}: useg.{name} is {obj!r}"

    def predict_twice():
        import numpy as np

        net = useg.UNet("ronneberger2015", width=4, depth=2)
        image = np.random.default_rng(0).random((48, 40)).astype(np.float32)
        first = useg.predict(net, image, device="cpu")
        second = useg.predict(net, image, device="cpu")
        assert first.shape == (2, 48, 40), first.shape
        assert np.array_equal(first, second)
    """
)

# (before the first look-up, between the two rounds of look-ups)
ORDERS = {
    "plain": ("", ""),
    # The module stays reachable for its other functions.
    "submodule-first": ("import useg.inference.predict",
                        "import sys\nfrom useg.inference.predict import make_predictor\n"
                        "assert sys.modules['useg.inference.predict'].make_predictor is "
                        "make_predictor\n"
                        "assert sys.modules['useg.inference.predict'].predict is useg.predict\n"
                        "assert set(useg.__all__) <= set(dir(useg))"),
    "from-submodule-first": ("from useg.inference.files import predict_file",
                             "from useg.nets.checkpoint import resolve_model"),
    "submodules-between": ("", "import useg.inference.predict, useg.inference.files, "
                           "useg.nets.checkpoint, useg.nets, useg.errors, useg.io, "
                           "useg.training.loop, useg.evaluation, useg.workflows.densify"),
    "cli": ("import useg.cli\nuseg.cli.build_parser()", "from useg.cli import predict"),
    "function-then-submodule": (
        "from useg import predict as p\nimport useg.inference.predict\n"
        "assert useg.predict is p", ""
    ),
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_public_names_survive_submodule_imports(order):
    before, between = ORDERS[order]
    script = "\n".join([
        CHECK, before, f"check('{order}: first')", "predict_twice()", between,
        f"check('{order}: second')", "predict_twice()", f"check('{order}: after predicting')",
    ])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

