"""OME-Zarr results that other tools read: `useg predict --dask --out r.ome.zarr` checked by
ome-zarr-models (the NGFF metadata models) and read back by ome-zarr-py's own reader."""

import numpy as np
import pytest
import torch

import useg.inference.dask as dp
from useg.cli import main
from useg.errors import ConfigError, InputError
from useg.io.chunked import create_array, open_array
from useg.io.ome import downsample, fill_levels, pyramid_factors
from useg.nets import UNet
from useg.nets.checkpoint import save_model

zarr = pytest.importorskip("zarr")
pytest.importorskip("dask")
pytest.importorskip("ome_zarr", reason="ome-zarr-py (useg[ome]) writes the OME-Zarr metadata")
models = pytest.importorskip("ome_zarr_models", reason="ome-zarr-models validates the metadata")
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Label, Multiscales, Reader  # noqa: E402

SHAPE = (200, 240)
SPACING = (0.25, 0.25)  # micrometres, at level 0 of the input
COMMON = ["--quiet", "--tile", "92", "--block", "64", "--scheduler", "synchronous", "--dask"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 2D model of instances, an OME-Zarr input with two levels in micrometres."""
    folder = tmp_path_factory.mktemp("ome")
    net = UNet("ronneberger2015", width=4, depth=2, classes=2).eval()
    net.reset_parameters(torch.Generator().manual_seed(0))
    model = save_model(net, folder / "m.safetensors",
                       {"labels": {"mode": "instances", "classes": ["bg", "fg"]}})
    image = (np.random.default_rng(0).random(SHAPE) * 255).astype(np.uint8)
    source = f"{folder}/in.ome.zarr"
    create_array(source, SHAPE, np.uint8, (64, 64), SPACING, pyramid=True)[:] = image
    assert fill_levels(source, "mean") == 1
    return {"model": str(model), "image": image, "source": source, "folder": folder}


def _reader_nodes(path):
    return {node.zarr.path.rstrip("/").rpartition(".ome.zarr")[2] or "/": node
            for node in Reader(parse_url(str(path)))()}


def _validate(path, zarr_format=3):
    version = models.v05 if zarr_format == 3 else models.v04
    return version.Image.from_zarr(zarr.open_group(str(path), mode="r"))


def test_predict_dask_writes_an_ngff_image_with_labels_and_a_pyramid(case, tmp_path, capsys):
    out = tmp_path / "r.ome.zarr"
    argv = ["predict", case["source"], "--model", case["model"], "--out", str(out), *COMMON,
            "--instances", "--instance-threshold", "0.5", "--min-size", "2"]
    assert main(argv) == 0, capsys.readouterr().err

    # ome-zarr-models: the image, its labels group, each label image and their levels.
    image = _validate(out)
    assert image.labels is not None and image.labels.label_paths == ["classes", "instances"]
    multiscale = image.ome_attributes.multiscales[0]
    assert [d.path for d in multiscale.datasets] == ["0", "1"]
    assert [(a.name, a.type, a.unit) for a in multiscale.axes] == [
        ("c", "channel", None), ("y", "space", "micrometer"), ("x", "space", "micrometer")]

    # ome-zarr-py's reader: the pyramid, the scales (the input's spacing, doubled at level 1)
    # and the two label images.
    nodes = _reader_nodes(out)
    assert set(nodes) >= {"/", "/labels/classes", "/labels/instances"}
    top = nodes["/"]
    assert any(isinstance(s, Multiscales) for s in top.specs)
    assert [tuple(d.shape) for d in top.data] == [(2, *SHAPE), (2, 100, 120)]
    scales = [t[0]["scale"] for t in top.metadata["coordinateTransformations"]]
    assert scales == [[1.0, *SPACING], [1.0, 0.5, 0.5]]
    for name in ("classes", "instances"):
        node = nodes[f"/labels/{name}"]
        assert any(isinstance(s, Label) for s in node.specs)
        assert [tuple(d.shape) for d in node.data] == [SHAPE, (100, 120)]
        assert [t[0]["scale"] for t in node.metadata["coordinateTransformations"]] == [
            list(SPACING), [0.5, 0.5]]

    # Level 1: averaged probabilities, labels by mode; the classes are those of level 0.
    probs = np.asarray(top.data[0])
    np.testing.assert_allclose(np.asarray(top.data[1]), downsample(probs, (2, 2), "mean"))
    classes = np.asarray(nodes["/labels/classes"].data[0])
    np.testing.assert_array_equal(classes, np.argmax(probs, axis=0))
    np.testing.assert_array_equal(np.asarray(nodes["/labels/classes"].data[1]),
                                  downsample(classes, (2, 2), "mode"))
    objects = np.asarray(nodes["/labels/instances"].data[0])
    assert objects.max() > 0
    np.testing.assert_array_equal(np.asarray(nodes["/labels/instances"].data[1]),
                                  downsample(objects, (2, 2), "mode"))

    # useg reads every level back with its voxel size.
    for spec, shape, spacing in ((out, (2, *SHAPE), SPACING), (f"{out}/1", (2, 100, 120),
                                 (0.5, 0.5)), (f"{out}/labels/instances/1", (100, 120),
                                 (0.5, 0.5))):
        arr, meta = open_array(spec)
        assert arr.shape == shape and meta["spacing"] == spacing
        assert meta["unit"] == "micrometer"

    # Run again: nothing to compute, and the labels stay listed once.
    assert main(argv) == 0
    assert _validate(out).labels.label_paths == ["classes", "instances"]


def test_input_from_a_pyramid_level_carries_its_spacing(case, tmp_path):
    out = tmp_path / "half.ome.zarr"
    assert main(["predict", f"{case['source']}/1", "--model", case["model"], "--out", str(out),
                 *COMMON]) == 0
    arr, meta = open_array(out)
    assert arr.shape == (2, 100, 120) and meta["spacing"] == (0.5, 0.5)
    # Level 1's voxel centres lie half a level-0 voxel in: the result is placed where it is.
    assert open_array(f"{case['source']}/1")[1]["origin"] == (0.125, 0.125)
    assert meta["origin"] == (0.125, 0.125)
    assert open_array(f"{out}/1")[1]["origin"] == (0.375, 0.375)
    assert open_array(f"{out}/labels/classes")[1]["origin"] == (0.125, 0.125)
    level0 = np.asarray(open_array(f"{case['source']}/1")[0])
    np.testing.assert_array_equal(level0, downsample(case["image"], (2, 2), "mean"))
    _validate(out)
    with pytest.raises(InputError, match=r"in\.ome\.zarr/7: no level '7' in this OME-Zarr "
                                         r"image \(its levels: 0, 1\)"):
        open_array(f"{case['source']}/7")


def test_unknown_spacing_names_no_unit_and_zarr2_writes_ngff_04(case, tmp_path):
    plain = f"{tmp_path}/plain.zarr/raw"
    create_array(plain, SHAPE, np.uint8, (64, 64))[:] = case["image"]
    out = tmp_path / "v2.ome.zarr"
    dp.predict_dask(case["model"], plain, out, labels=f"{out}/labels/classes", block=64,
                    tile=92, scheduler="synchronous", progress=False, zarr_format=2)
    image = _validate(out, zarr_format=2)
    multiscale = image.attributes.multiscales[0]
    assert multiscale.version == "0.4"
    assert [a.unit for a in multiscale.axes] == [None, None, None]  # pixels: no unit claimed
    assert [d.coordinateTransformations[0].scale for d in multiscale.datasets] == [
        [1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]
    top = _reader_nodes(out)["/"]
    assert [tuple(d.shape) for d in top.data] == [(2, *SHAPE), (2, 100, 120)]
    assert open_array(out)[1]["unit"] is None


def test_interrupted_ome_run_resumes_and_refills_its_levels(case, tmp_path, monkeypatch):
    whole = tmp_path / "whole.ome.zarr"
    kw = dict(block=64, tile=92, scheduler="synchronous", progress=False)
    dp.predict_dask(case["model"], case["source"], whole, labels=f"{whole}/labels/classes", **kw)

    out = tmp_path / "cut.ome.zarr"
    real = dp.predict_block

    def crashing(job, index, image=None):
        if tuple(index) == (1, 1):
            raise RuntimeError("worker lost")
        return real(job, index, image)

    monkeypatch.setattr(dp, "predict_block", crashing)
    with pytest.raises(RuntimeError, match="worker lost"):
        dp.predict_dask(case["model"], case["source"], out, labels=f"{out}/labels/classes",
                        **kw)
    monkeypatch.setattr(dp, "predict_block", real)
    result = dp.predict_dask(case["model"], case["source"], out,
                             labels=f"{out}/labels/classes", **kw)
    assert 0 < len(result["computed"]) < result["blocks"]

    def levels(path):
        group = zarr.open_group(str(path), mode="r")
        return [np.asarray(group[k]) for k in ("0", "1", "labels/classes/0", "labels/classes/1")]

    for a, b in zip(levels(out), levels(whole), strict=True):
        np.testing.assert_array_equal(a, b)

    # Killed while filling the levels: no blocks are left, the levels are filled again.
    (out / ".useg-run/levels.json").unlink()
    zarr.open_group(str(out), mode="r+")["1"][:] = 0
    result = dp.predict_dask(case["model"], case["source"], out,
                             labels=f"{out}/labels/classes", **kw)
    assert result["computed"] == []
    for a, b in zip(levels(out), levels(whole), strict=True):
        np.testing.assert_array_equal(a, b)
    _validate(out)


def test_no_probs_into_ome_zarr_is_refused_in_one_line(case, tmp_path, capsys):
    out = tmp_path / "x.ome.zarr"
    assert main(["predict", case["source"], "--model", case["model"], "--out", str(out),
                 *COMMON, "--no-probs"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x.ome.zarr: an OME-Zarr result" in err
    assert not out.exists()


def test_without_ome_zarr_py_one_line_names_the_extra(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ome_zarr", None)
    out = tmp_path / "y.ome.zarr"
    assert main(["predict", case["source"], "--model", case["model"], "--out", str(out),
                 *COMMON]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(
        "y.ome.zarr: writing an OME-Zarr image needs ome-zarr-py; install it with "
        "pip install 'useg[ome]'")
    assert not out.exists()
    # Reading OME-Zarr needs only zarr.
    assert open_array(f"{case['source']}/1")[0].shape == (100, 120)


def test_pyramid_factors_halve_z_only_for_isotropic_enough_volumes():
    assert pyramid_factors((64, 1024, 1024)) == [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
    # Z twice as coarse: Z waits one level, until Y/X have caught up.
    assert pyramid_factors((64, 1024, 1024), (1.0, 0.5, 0.5)) == [
        (1, 1, 1), (1, 2, 2), (2, 4, 4)]
    assert pyramid_factors((64, 4096, 4096), (5.0, 0.5, 0.5)) == [
        (1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8), (2, 16, 16)]
    assert pyramid_factors((1, 100, 100)) == [(1, 1, 1), (1, 2, 2)]  # at least two levels
    assert len(pyramid_factors((3, 2))) == 2


def test_downsample_mode_prefers_the_most_frequent_then_the_first():
    labels = np.array([[[1, 2], [2, 3]], [[4, 5], [6, 7]]])
    assert downsample(labels, (2, 2, 2), "mode").tolist() == [[[2]]]
    assert downsample(np.array([[5, 6, 7]]), (1, 2), "mode").tolist() == [[5, 7]]
    with pytest.raises(ConfigError, match="mean or mode"):
        downsample(labels, (2, 2, 2), "median")


def test_isotropic_volume_halves_z_too_and_validates(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "vol.ome.zarr"
    probs = rng.random((2, 10, 300, 260), dtype=np.float32)
    create_array(path, probs.shape, np.float32, (2, 4, 64, 64), (0.5, 0.5, 0.5), axes="CZYX",
                 pyramid=True)[:] = probs
    cells = rng.integers(0, 4, probs.shape[1:]).astype(np.uint32)
    create_array(f"{path}/labels/cells", cells.shape, np.uint32, (4, 64, 64), (0.5, 0.5, 0.5),
                 pyramid=True)[:] = cells
    assert fill_levels(path, "mean") == 1 and fill_levels(f"{path}/labels/cells", "mode") == 1
    assert _validate(path).labels.label_paths == ["cells"]
    nodes = _reader_nodes(path)
    assert [tuple(d.shape) for d in nodes["/"].data] == [probs.shape, (2, 5, 150, 130)]
    assert [t for t in nodes["/"].metadata["coordinateTransformations"][1]] == [
        {"type": "scale", "scale": [1.0, 1.0, 1.0, 1.0]},
        {"type": "translation", "translation": [0.0, 0.25, 0.25, 0.25]}]
    np.testing.assert_allclose(np.asarray(nodes["/"].data[1]),
                               downsample(probs, (2, 2, 2), "mean"), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(nodes["/labels/cells"].data[1]),
                                  downsample(cells, (2, 2, 2), "mode"))


def test_result_of_a_tiff_without_a_unit_claims_none(case, tmp_path):
    # The TIFF holds ratios (resolution unit "none"): the OME-Zarr result keeps the ratios and
    # names no unit, and so does a TIFF result of the same input.
    import tifffile

    source = tmp_path / "ratios.tif"
    tifffile.imwrite(source, case["image"], resolution=(0.5, 0.5), resolutionunit="NONE")
    out = tmp_path / "r.ome.zarr"
    assert main(["predict", str(source), "--model", case["model"], "--out", str(out),
                 *COMMON]) == 0
    multiscale = _validate(out).ome_attributes.multiscales[0]
    assert [a.unit for a in multiscale.axes] == [None, None, None]
    assert multiscale.datasets[0].coordinateTransformations[0].scale == [1.0, 2.0, 2.0]
    assert open_array(out)[1]["unit"] is None

    from useg.io import read_image

    folder = tmp_path / "tiffs"
    assert main(["predict", str(source), "--model", case["model"], "--out", str(folder),
                 "--quiet", "--tile", "92"]) == 0
    written = sorted(folder.glob("*.tif"))
    assert written
    for path in written:
        meta = read_image(path)[1]
        assert meta["spacing"] == pytest.approx((2.0, 2.0)) and meta["unit"] is None


def _ome_input(path, transforms, axes=("y", "x"), data=None):
    """A one-level OME-Zarr 0.5 image written by hand, with these transforms of level 0."""
    data = np.zeros((64, 64), np.float32) if data is None else data
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", shape=data.shape, dtype=data.dtype)[:] = data
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": transforms}]}]}
    return str(path)


def test_a_scale_that_does_not_fit_is_refused_naming_the_input(tmp_path):
    for scale in ([0.5], [0.5, -1.0], [0.5, "a"]):
        source = _ome_input(tmp_path / "bad.ome.zarr", [{"type": "scale", "scale": scale}])
        with pytest.raises(InputError, match=r"bad\.ome\.zarr: OME-Zarr scale .* positive"):
            open_array(source)
    for shift in ([1.0], [1.0, float("nan")], None):
        source = _ome_input(tmp_path / "bad.ome.zarr", [
            {"type": "scale", "scale": [0.5, 0.5]}, {"type": "translation", "translation": shift}])
        with pytest.raises(InputError, match=r"bad\.ome\.zarr: OME-Zarr translation .* 2 numbers"):
            open_array(source)
    # No scale at all: the voxel size is unknown, never 1 micrometre.
    source = _ome_input(tmp_path / "none.ome.zarr", [])
    assert open_array(source)[1]["spacing"] is None and open_array(source)[1]["unit"] is None


def test_the_position_of_an_input_is_carried_to_its_results(case, tmp_path):
    source = _ome_input(tmp_path / "moved.ome.zarr", [
        {"type": "scale", "scale": [0.5, 0.25]},
        {"type": "translation", "translation": [10.0, 20.0]}],
        data=case["image"][:64, :64].astype(np.float32))
    assert open_array(source)[1]["origin"] == (10.0, 20.0)
    out = tmp_path / "r.ome.zarr"
    assert main(["predict", source, "--model", case["model"], "--out", str(out), *COMMON]) == 0
    for spec in (out, f"{out}/labels/classes"):
        meta = open_array(spec)[1]
        assert meta["origin"] == (10.0, 20.0) and meta["spacing"] == (0.5, 0.25)
    _validate(out)


def test_plain_results_claim_micrometres_only_for_micrometres(case, tmp_path):
    plain = f"{tmp_path}/in.zarr/raw"
    create_array(plain, (64, 64), np.uint8, (64, 64), spacing=(2.0, 3.0), unit=None)[:] = (
        case["image"][:64, :64])
    assert open_array(plain)[1]["spacing"] == (2.0, 3.0) and open_array(plain)[1]["unit"] is None
    out = tmp_path / "out.zarr"
    assert main(["predict", plain, "--model", case["model"], "--out", str(out), *COMMON]) == 0
    for name in ("probs", "labels"):
        array, meta = open_array(f"{out}/{name}")
        assert "element_size_um" not in array.attrs
        assert meta["spacing"] == (2.0, 3.0) and meta["unit"] is None
    create_array(f"{tmp_path}/nm.zarr/raw", (4, 4), np.uint8, (4, 4), spacing=(5.0, 5.0),
                 unit="nanometer")
    assert open_array(f"{tmp_path}/nm.zarr/raw")[1]["unit"] == "nanometer"


def test_xarray_dimension_names_give_the_axes(tmp_path):
    array = zarr.open_array(str(tmp_path / "x.zarr"), mode="w", shape=(8, 6, 4), dtype="f4",
                            zarr_format=2)
    array.attrs["_ARRAY_DIMENSIONS"] = ["y", "x", "z"]
    assert open_array(str(tmp_path / "x.zarr"))[1]["axes"] == "YXZ"


def test_complex_or_misordered_inputs_are_refused_naming_the_file(case, tmp_path, capsys):
    store = tmp_path / "c.zarr"
    zarr.open_array(str(store), mode="w", shape=(64, 64), dtype="c8")[:] = 1j
    assert main(["predict", str(store), "--model", case["model"], "--out",
                 str(tmp_path / "o1.zarr"), *COMMON]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "c.zarr" in err and "complex" in err, err
    source = _ome_input(tmp_path / "yx.ome.zarr", [{"type": "scale", "scale": [1.0, 1.0]}])
    group = zarr.open_group(source, mode="a")
    ome = group.attrs["ome"]
    ome["multiscales"][0]["axes"] = [{"name": "x", "type": "space"},
                                     {"name": "y", "type": "space"}]
    group.attrs["ome"] = ome
    assert main(["predict", source, "--model", case["model"], "--out",
                 str(tmp_path / "o2.zarr"), *COMMON]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "yx.ome.zarr" in err, err
