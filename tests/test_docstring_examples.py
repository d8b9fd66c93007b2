"""The examples in the package's docstrings run and print what they show."""

import doctest
import importlib
import pkgutil
import tempfile

import pytest

import useg

# The napari plugin's modules need napari and a display (tests/test_napari.py covers them);
# importing __main__ runs the command line.
SKIPPED = ("useg.napari_plugin", "useg.__main__")
MODULES = sorted(m.name for m in pkgutil.walk_packages(useg.__path__, "useg.")
                 if not m.name.startswith(SKIPPED))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    # The examples write into tempfile.mkdtemp() folders: here, under pytest's, cleaned after.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    module = importlib.import_module(name)
    result = doctest.testmod(module, report=True,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} example(s) of {name} failed (see stdout)"
