"""NIfTI in and out: NIfTI's X, Y, Z voxels land at useg's (Z, Y, X) and come back, with the
spacing in Z, Y, X order and the affine kept; ``useg predict`` on a ``.nii.gz`` writes
``.nii.gz`` results in the input's space; training and evaluation pair ``.nii.gz`` files."""

import shutil

import numpy as np
import pytest

from useg.cli import main
from useg.inference.predict import predict
from useg.io import is_result_file, list_images, pair_by_stem, read_image, read_labels, write_image
from useg.io.files import file_stem, result_paths
from useg.nets import UNet
from useg.nets.checkpoint import load_model, save_model

nib = pytest.importorskip("nibabel", reason="nibabel not installed (pip install useg[nifti])")

ZOOMS = (0.5, 0.8, 2.0)  # mm along NIfTI's X, Y, Z
VOXEL = (1, 2, 3)  # a marked voxel at NIfTI (x, y, z)


def _affine():
    """A rotation about Z by 30 degrees, the zooms, and a shift: not the identity."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(ZOOMS)
    affine[:3, 3] = (-12.5, 7.0, 30.0)
    return affine


def _save(path, data, affine=None):
    img = nib.Nifti1Image(data, _affine() if affine is None else affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path


def _volume(dtype=np.float32, shape=(5, 6, 7)):
    data = np.zeros(shape, dtype)
    data[VOXEL] = 9
    return data


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_read_puts_xyz_at_zyx_with_spacing_in_zyx(tmp_path, name):
    path = _save(tmp_path / name, _volume())
    image, meta = read_image(path)
    x, y, z = VOXEL
    assert image.shape == (1, 7, 6, 5) and meta["axes"] == "CZYX"
    assert image[0, z, y, x] == 9 and image.sum() == 9
    # mm in the header -> micrometres, Z first
    assert meta["spacing"] == pytest.approx((2000.0, 800.0, 500.0))
    np.testing.assert_allclose(meta["nifti"].get_best_affine(), _affine(), atol=1e-6)
    labels, lmeta = read_labels(_save(tmp_path / f"l_{name}", _volume(np.int16)))
    assert labels.shape == (7, 6, 5) and labels.dtype == np.int16 and labels[z, y, x] == 9
    assert lmeta["axes"] == "ZYX"


def test_four_dimensional_file_is_channels_and_2d_file_is_yx(tmp_path):
    data = np.stack([_volume(), 2 * _volume()], axis=-1)  # (X, Y, Z, C)
    image, meta = read_image(_save(tmp_path / "c.nii.gz", data))
    x, y, z = VOXEL
    assert image.shape == (2, 7, 6, 5)
    assert image[0, z, y, x] == 9 and image[1, z, y, x] == 18
    flat = np.zeros((5, 6), np.uint8)
    flat[1, 2] = 3  # x = 1, y = 2
    image, meta = read_image(_save(tmp_path / "f.nii.gz", flat, np.diag([0.5, 0.8, 1, 1])))
    assert image.shape == (1, 6, 5) and image[0, 2, 1] == 3
    assert meta["spacing"] == pytest.approx((800.0, 500.0))


def test_write_with_reference_keeps_affine_and_voxels(tmp_path):
    src = _save(tmp_path / "v.nii.gz", _volume())
    image, meta = read_image(src)
    out = write_image(tmp_path / "w.nii.gz", image[0] * 2, axes="ZYX", reference=meta["nifti"])
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, _affine(), atol=1e-6)
    assert back.shape == (5, 6, 7) and back.get_fdata()[VOXEL] == 18
    assert back.header.get_zooms()[:3] == pytest.approx(ZOOMS)
    again, again_meta = read_image(out)
    np.testing.assert_array_equal(again[0], image[0] * 2)
    assert again_meta["spacing"] == pytest.approx(meta["spacing"])
    # channels go to the fourth axis; without a reference the affine is the spacing
    probs = np.stack([image[0], 1 - image[0]]).astype(np.float32)
    out = write_image(tmp_path / "p.nii", probs, axes="CZYX", spacing=(3.0, 2.0, 1.0))
    back = nib.load(out)
    assert back.shape == (5, 6, 7, 2) and back.get_fdata()[(*VOXEL, 0)] == 9
    np.testing.assert_allclose(np.diag(back.affine), (1.0, 2.0, 3.0, 1.0))
    assert read_image(out)[1]["spacing"] == pytest.approx((3.0, 2.0, 1.0))


def test_names_stems_and_listing(tmp_path):
    assert file_stem("a/brain.nii.gz") == "brain"
    assert [p.name for p in result_paths("o", "d/brain.nii.gz").values()] == [
        "brain_probs.nii.gz", "brain_labels.nii.gz"]
    assert [p.name for p in result_paths("o", "brain.nii").values()] == [
        "brain_probs.nii", "brain_labels.nii"]
    assert [p.name for p in result_paths("o", "cell.tif").values()] == [
        "cell_probs.tif", "cell_labels.tif"]  # unchanged for TIFF
    (tmp_path / "im").mkdir()
    (tmp_path / "lab").mkdir()
    for name in ("im/10.nii.gz", "im/2.nii", "lab/2.nii.gz"):
        _save(tmp_path / name, _volume())
    write_image(tmp_path / "lab/10.tif", np.zeros((7, 6, 5), np.uint8), axes="ZYX")
    (tmp_path / "im/notes.gz").write_bytes(b"")
    images = list_images(tmp_path / "im")
    assert [p.name for p in images] == ["2.nii", "10.nii.gz"]
    pairs = pair_by_stem(images, list_images(tmp_path / "lab"))
    assert [(a.name, b.name) for a, b in pairs] == [("2.nii", "2.nii.gz"), ("10.nii.gz", "10.tif")]


def test_predict_nifti_writes_nifti_with_the_input_affine(tmp_path):
    net = UNet("cicek2016", width=2, depth=1, classes=2)
    model = save_model(net, tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    data = (rng.random((20, 24, 16)) * 100).astype(np.float32)  # (X, Y, Z)
    src = tmp_path / "in"
    src.mkdir()
    _save(src / "brain.nii.gz", data)
    out = tmp_path / "out"
    assert main(["predict", str(src), "--model", str(model), "--out", str(out), "--quiet",
                 "--device", "cpu", "--precision", "fp32"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["brain_labels.nii.gz", "brain_probs.nii.gz"]
    probs = nib.load(out / "brain_probs.nii.gz")
    labels = nib.load(out / "brain_labels.nii.gz")
    for img in (probs, labels):
        np.testing.assert_allclose(img.affine, _affine(), atol=1e-6)
        assert img.header.get_xyzt_units()[0] == "mm"
    assert probs.shape == (20, 24, 16, 2) and labels.shape == (20, 24, 16)
    expected = predict(load_model(model), data.T[None], device="cpu", precision="fp32")
    np.testing.assert_allclose(np.asarray(probs.dataobj), np.transpose(expected, (3, 2, 1, 0)),
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(labels.dataobj), expected.argmax(0).T)
    assert is_result_file(out / "brain_probs.nii.gz")
    assert not is_result_file(src / "brain.nii.gz")
    # the result files are NIfTI label images that useg evaluate reads and pairs (with a copy:
    # one file on both sides is refused); a class map is no objects, as a TIFF one is not
    (tmp_path / "reference").mkdir()
    shutil.copy(out / "brain_labels.nii.gz", tmp_path / "reference" / "brain_labels.nii.gz")
    assert main(["evaluate", str(out / "brain_labels.nii.gz"),
                 str(tmp_path / "reference" / "brain_labels.nii.gz"), "--mode", "instances"]) == 2
    objects = tmp_path / "objects"
    assert main(["predict", str(src), "--model", str(model), "--out", str(objects), "--quiet",
                 "--device", "cpu", "--precision", "fp32", "--instances", "--no-probs"]) == 0
    shutil.copy(objects / "brain_instances.nii.gz", tmp_path / "reference")
    assert main(["evaluate", str(objects / "brain_instances.nii.gz"),
                 str(tmp_path / "reference" / "brain_instances.nii.gz"), "--mode",
                 "instances"]) == 0


def test_without_nibabel_one_line(tmp_path, monkeypatch, capsys):
    import builtins

    path = _save(tmp_path / "v.nii.gz", _volume())
    model = save_model(UNet("cicek2016", width=2, depth=1), tmp_path / "m.safetensors")
    real_import = builtins.__import__

    def no_nibabel(name, *args, **kwargs):
        if name == "nibabel" or name.startswith("nibabel."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nibabel)
    assert main(["predict", str(path), "--model", str(model), "--out",
                 str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install useg[nifti]" in err and "v.nii.gz" in err


def test_train_reads_nifti_pairs(tmp_path):
    from useg.workflows.synthetic import touching_cells

    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        image, cells = touching_cells((16, 40, 40), rng=seed)  # (C, Z, Y, X), (Z, Y, X)
        _save(tmp_path / "images" / f"{name}.nii.gz", np.asarray(image[0]).T)
        _save(tmp_path / "labels" / f"{name}.nii.gz", cells.astype(np.int16).T)
    run = tmp_path / "run"
    assert main(["train", "--images", str(tmp_path / "images"), "--labels",
                 str(tmp_path / "labels"), "--preset", "cicek2016", "--out", str(run),
                 "--iterations", "2", "--width", "2", "--depth", "1", "--tile", "28",
                 "--workers", "0", "--quiet"]) == 0
    assert (run / "last.safetensors").is_file()


@pytest.mark.parametrize("content", [b"not nifti at all", b"\x1f\x8b\x08\x00truncated"])
def test_corrupt_nifti_one_line(tmp_path, capsys, content):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(content)
    model = save_model(UNet("cicek2016", width=2, depth=1), tmp_path / "m.safetensors")
    assert main(["predict", str(path), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.nii.gz" in err and "NIfTI" in err
