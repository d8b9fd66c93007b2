"""`pip install useg` without extras keeps working: the core commands never import an extra's
package, and a command that needs one says which extra to install, in one line."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

# The top-level packages of the optional extras (pyproject.toml).
EXTRAS = ("napari", "magicgui", "qtpy", "PyQt6", "npe2", "bioimageio", "onnx", "onnxruntime",
          "nibabel", "zarr", "dask", "distributed", "h5py", "ome_zarr", "ome_zarr_models")


def _run_without_extras(code: str) -> subprocess.CompletedProcess:
    # Each extra's package is made unimportable (None in sys.modules) before useg is imported.
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in EXTRAS)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.timeout(900)
def test_core_commands_work_without_any_extra(tmp_path):
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    (tmp_path / "train/images").mkdir(parents=True)
    (tmp_path / "train/labels").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "train/images/a.tif", image)
    tifffile.imwrite(tmp_path / "train/labels/a.tif", ((image > 128) * 255).astype(np.uint8))
    done = _run_without_extras(f"""
        from useg.cli import main
        root = {str(tmp_path)!r}
        assert main(["train", "--images", root + "/train/images", "--labels",
                     root + "/train/labels", "--out", root + "/run", "--iterations", "2",
                     "--width", "2", "--depth", "1", "--tile", "36", "--workers", "0",
                     "--quiet"]) == 0
        assert main(["predict", root + "/train/images", "--model", root + "/run", "--out",
                     root + "/pred", "--quiet"]) == 0
        assert main(["evaluate", root + "/pred/a_probs.tif", root + "/train/labels/a.tif",
                     "--channel", "1", "--json", root + "/scores.json"]) == 0
        assert main(["export", root + "/run", "--format", "torchscript", "--out",
                     root + "/m.pt"]) == 0
        import useg
        useg.predict
        loaded = sorted(n for n in {EXTRAS!r} if sys.modules.get(n) is not None)
        assert not loaded, loaded
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "pred" / "a_probs.tif").exists() and (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("argv, extra", [
    (["export", "em-membrane", "--format", "onnx", "--out", "{tmp}/m.onnx"], "export"),
    (["export", "em-membrane", "--format", "bioimageio", "--out", "{tmp}/m.zip"], "bioimageio"),
    (["predict", "{tmp}/a.tif", "--model", "em-membrane", "--out", "{tmp}/o.zarr", "--dask"],
     "scale"),
])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, argv, extra):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((64, 64), np.uint8))
    argv = [a.format(tmp=tmp_path) for a in argv]
    done = _run_without_extras(f"""
        from useg.cli import main
        sys.exit(main({argv!r}))
    """)
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1, err[-2000:]
    assert f"useg[{extra}]" in err
    assert not list(tmp_path.glob("m.*")) and not (tmp_path / "o.zarr").exists()
