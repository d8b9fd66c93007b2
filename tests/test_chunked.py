import json

import numpy as np
import pytest

from useg.errors import ConfigError, InputError
from useg.io.chunked import (
    AxesView,
    as_channels_first,
    create_array,
    is_array_spec,
    open_array,
    parse_spec,
)

zarr = pytest.importorskip("zarr")
h5py = pytest.importorskip("h5py")


@pytest.mark.parametrize(
    "text, kind, container, inner",
    [
        ("vol.zarr", "zarr", "vol.zarr", ""),
        ("data/vol.zarr/raw", "zarr", "data/vol.zarr", "raw"),
        ("data/vol.zarr:raw", "zarr", "data/vol.zarr", "raw"),
        ("vol.zarr/s0/raw/", "zarr", "vol.zarr", "s0/raw"),
        ("a.zarr.bak/b.zarr/x", "zarr", "a.zarr.bak/b.zarr", "x"),
        ("img.ome.zarr/1", "zarr", "img.ome.zarr", "1"),
        ("scan.h5:/volumes/raw", "hdf5", "scan.h5", "volumes/raw"),
        ("scan.HDF5:raw", "hdf5", "scan.HDF5", "raw"),
        ("scan.h5", "hdf5", "scan.h5", ""),
        ("cells.n5/raw", "n5", "cells.n5", "raw"),
        ("plainfolder", "zarr", "plainfolder", ""),
    ],
)
def test_parse_spec(text, kind, container, inner):
    sp = parse_spec(text)
    assert (sp.kind, str(sp.container), sp.inner) == (kind, container, inner)
    assert str(sp) == text


def test_is_array_spec(tmp_path):
    assert is_array_spec("x.zarr") and is_array_spec("y.h5:/a") and is_array_spec("z.n5/a")
    assert not is_array_spec(tmp_path / "image.tif")
    folder = tmp_path / "store"
    create_array(folder, (4, 4), np.uint8, (2, 2))
    assert is_array_spec(folder)  # a zarr store without the .zarr suffix


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_round_trip_keeps_data_axes_spacing(tmp_path, fmt, rng):
    data = rng.integers(0, 60000, (2, 9, 13, 11)).astype(np.uint16)
    spec = f"{tmp_path}/v.zarr/group/raw"
    a = create_array(spec, data.shape, data.dtype, (1, 4, 5, 6), spacing=(2.0, 0.5, 0.25),
                     axes="CZYX", zarr_format=fmt)
    a[:] = data
    arr, meta = open_array(spec)
    np.testing.assert_array_equal(arr[:], data)
    assert meta["format"] == f"zarr{fmt}"
    assert meta["axes"] == "CZYX" and meta["spacing"] == (2.0, 0.5, 0.25)
    assert meta["chunks"] == (1, 4, 5, 6) and meta["shape"] == data.shape
    assert meta["ome"] is None
    on_disk = "zarr.json" if fmt == 3 else ".zarray"
    assert (tmp_path / "v.zarr/group/raw" / on_disk).is_file()
    # A second array in the same store keeps the store's format.
    b = create_array(f"{tmp_path}/v.zarr/other", (3,), np.float32, (2,))
    assert b.metadata.zarr_format == fmt
    with pytest.raises(InputError, match="format"):
        create_array(f"{tmp_path}/v.zarr/third", (3,), np.float32, (2,), zarr_format=5 - fmt)
    # Partial reads touch only what they need and match NumPy.
    np.testing.assert_array_equal(arr[1, 2:7, ::3, 4], data[1, 2:7, ::3, 4])


def test_create_refuses_to_clobber_and_overwrites_on_request(tmp_path):
    spec = tmp_path / "a.zarr"
    create_array(spec, (4, 4), np.uint8, (2, 2))[:] = 9
    with pytest.raises(InputError, match=r"a\.zarr: already exists"):
        create_array(spec, (4, 4), np.uint8, (2, 2))
    b = create_array(spec, (6, 2), np.float32, (3, 2), overwrite=True)
    assert b.shape == (6, 2) and np.all(open_array(spec)[0][:] == 0)
    create_array(f"{spec}2/x", (2,), np.uint8, (2,))
    with pytest.raises(InputError, match="already exists"):
        create_array(f"{spec}2/x", (2,), np.uint8, (2,))


@pytest.mark.parametrize("fmt, version", [(2, "0.4"), (3, "0.5")])
def test_ome_zarr_written_minimal_and_read_back(tmp_path, fmt, version):
    pytest.importorskip("ome_zarr", reason="writing OME-Zarr needs ome-zarr-py (useg[ome])")
    spec = tmp_path / "img.ome.zarr"
    a = create_array(spec, (2, 5, 8, 8), np.float32, (1, 5, 4, 4), spacing=(1.5, 0.2, 0.1),
                     zarr_format=fmt)
    a[:] = 1.0
    group = zarr.open_group(str(spec), mode="r")
    attrs = group.attrs.asdict()
    ms = attrs["multiscales"][0] if fmt == 2 else attrs["ome"]["multiscales"][0]
    assert (ms["version"] if fmt == 2 else attrs["ome"]["version"]) == version
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert [a["type"] for a in ms["axes"]] == ["channel", "space", "space", "space"]
    assert ms["axes"][1]["unit"] == "micrometer"
    assert ms["datasets"] == [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1.5, 0.2, 0.1]}]}]
    if fmt == 3:
        assert group["0"].metadata.dimension_names == ("c", "z", "y", "x")
    for s in (spec, f"{spec}/0"):
        arr, meta = open_array(s)
        assert arr.shape == (2, 5, 8, 8)
        assert meta["axes"] == "CZYX" and meta["spacing"] == (1.5, 0.2, 0.1)
        assert meta["ome"]["version"] == version and meta["ome"]["levels"] == ["0"]


def test_ome_zarr_from_another_writer_levels_units_and_global_scale(tmp_path):
    # Two levels, nanometres, a multiscale-wide scale and axes with a time point: as written
    # by other tools. Level 1 is twice as coarse in Y and X.
    root = zarr.open_group(str(tmp_path / "ext.zarr"), mode="w", zarr_format=2)
    root.create_array("s0", shape=(1, 6, 16, 16), chunks=(1, 6, 8, 8), dtype="u1")
    root.create_array("s1", shape=(1, 6, 8, 8), chunks=(1, 6, 8, 8), dtype="u1")
    root.attrs.update({"multiscales": [{
        "version": "0.4",
        "axes": [{"name": "t", "type": "time", "unit": "second"},
                 {"name": "z", "type": "space", "unit": "nanometer"},
                 {"name": "y", "type": "space", "unit": "nanometer"},
                 {"name": "x", "type": "space", "unit": "nanometer"}],
        "datasets": [
            {"path": "s0", "coordinateTransformations": [
                {"type": "scale", "scale": [1, 400, 100, 100]}]},
            {"path": "s1", "coordinateTransformations": [
                {"type": "scale", "scale": [1, 400, 200, 200]},
                {"type": "translation", "translation": [0, 0, 50, 50]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1, 1, 1]}],
    }]})
    arr, meta = open_array(tmp_path / "ext.zarr")
    assert arr.shape == (1, 6, 16, 16) and meta["axes"] == "TZYX"
    assert meta["spacing"] == pytest.approx((0.4, 0.1, 0.1))
    arr, meta = open_array(f"{tmp_path}/ext.zarr/s1")
    assert arr.shape == (1, 6, 8, 8) and meta["ome"]["level"] == 1
    assert meta["spacing"] == pytest.approx((0.4, 0.2, 0.2))
    # The time axis of size 1 is dropped, a channel axis added, lazily.
    view = as_channels_first(arr, meta["axes"], spatial_ndim=3)
    assert view.shape == (1, 6, 8, 8)


def test_ome_image_checks_axes_and_spacing_and_names_the_extra(tmp_path, monkeypatch):
    pytest.importorskip("ome_zarr", reason="writing OME-Zarr needs ome-zarr-py (useg[ome])")
    with pytest.raises(ConfigError, match="axes 'ZCYX' must be letters of TCZYX in that order"):
        create_array(tmp_path / "a.ome.zarr", (2, 1, 4, 4), np.uint8, (2, 1, 4, 4), axes="ZCYX")
    with pytest.raises(ConfigError, match=r"spacing \(1\.0,\) does not fit"):
        create_array(tmp_path / "b.ome.zarr", (1, 4, 4), np.uint8, (1, 4, 4), (1.0,),
                     axes="CYX")
    create_array(tmp_path / "c.ome.zarr", (4, 4), np.uint8, (4, 4), (0.3, 0.3))
    meta = zarr.open_group(str(tmp_path / "c.ome.zarr"), mode="r").attrs.asdict()
    assert [d["coordinateTransformations"] for d in meta["ome"]["multiscales"][0]["datasets"]
            ] == [[{"type": "scale", "scale": [0.3, 0.3]}]]
    json.dumps(meta)
    # Without ome-zarr-py, one line naming the extra to install (and nothing written).
    monkeypatch.setitem(__import__("sys").modules, "ome_zarr", None)
    with pytest.raises(ConfigError, match=r"d\.ome\.zarr: writing an OME-Zarr image needs "
                       r"ome-zarr-py; install it with pip install 'useg\[ome\]'"):
        create_array(tmp_path / "d.ome.zarr", (4, 4), np.uint8, (4, 4))
    assert not (tmp_path / "d.ome.zarr").exists()


def test_hdf5_path_syntax_round_trip(tmp_path, rng):
    data = rng.standard_normal((7, 12, 10)).astype(np.float32)
    spec = f"{tmp_path}/scan.h5:/volumes/raw"
    ds = create_array(spec, data.shape, data.dtype, (4, 6, 5), spacing=(1.0, 0.3, 0.3),
                      axes="ZYX")
    ds[:] = data
    ds.file.close()
    with h5py.File(tmp_path / "scan.h5", "r") as f:
        assert f["volumes/raw"].chunks == (4, 6, 5)
        np.testing.assert_array_equal(f["volumes/raw"].attrs["element_size_um"], [1.0, 0.3, 0.3])
    for s in (spec, f"{tmp_path}/scan.h5:volumes/raw", f"{tmp_path}/scan.h5"):
        arr, meta = open_array(s)
        np.testing.assert_array_equal(arr[:], data)
        assert meta["format"] == "hdf5" and meta["axes"] == "ZYX"
        assert meta["spacing"] == pytest.approx((1.0, 0.3, 0.3))
        arr.file.close()
    create_array(f"{tmp_path}/scan.h5:/labels", (2, 2), np.uint8, (1, 1)).file.close()
    with pytest.raises(InputError, match="volumes/raw") as err:
        open_array(tmp_path / "scan.h5")  # two datasets now: name one
    assert "\n" not in str(err.value) and "scan.h5" in str(err.value)


@pytest.mark.parametrize(
    "make, spec, pattern",
    [
        (None, "missing.zarr/raw", r"missing\.zarr/raw: no such file"),
        ("group", "g.zarr", r"g\.zarr: is a zarr group, not an array; its arrays: raw"),
        ("group", "g.zarr/nope", r"g\.zarr/nope: no zarr array or group"),
        (None, "cells.n5/raw", r"cells\.n5/raw: N5 is not supported"),
        (None, "missing.h5:/raw", r"missing\.h5:/raw: no such file"),
        ("h5", "f.h5:/nope", r"f\.h5:/nope: no dataset 'nope'"),
        ("garbage", "bad.h5", r"bad\.h5: not a readable HDF5 file"),
    ],
)
def test_open_errors_are_one_line_and_name_the_path(tmp_path, monkeypatch, make, spec, pattern):
    monkeypatch.chdir(tmp_path)
    if make == "group":
        create_array("g.zarr/raw", (2, 2), np.uint8, (2, 2))
    elif make == "h5":
        create_array("f.h5:/raw", (2, 2), np.uint8, (2, 2)).file.close()
    elif make == "garbage":
        (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match=pattern) as err:
        open_array(spec)
    assert "\n" not in str(err.value)


class _Recorder:
    """An array-like that records the keys it is read with."""

    def __init__(self, data):
        self.data, self.shape, self.ndim, self.dtype = data, data.shape, data.ndim, data.dtype
        self.keys = []

    def __getitem__(self, key):
        self.keys.append(key)
        return self.data[key]


def test_axes_view_matches_numpy_and_reads_only_the_slice(rng):
    base = rng.integers(0, 100, (1, 6, 7, 8))  # T, Z, Y, X
    rec = _Recorder(base)
    view = AxesView(rec, drop=(0,), add_channel=True)
    expected = base[0][None]
    assert view.shape == expected.shape and view.ndim == 4
    keys = [
        (slice(None), slice(1, 4), slice(None, None, 2), 3),
        (0, 2),
        (Ellipsis, slice(2, 5)),
        (slice(None), Ellipsis, 1),
        (slice(1, None),),
        (-1, slice(None), slice(6, 7)),
    ]
    for key in keys:
        np.testing.assert_array_equal(view[key], expected[key])
    # Each read was passed on as one basic slice of the source, never the whole array.
    assert rec.keys[0] == (0, slice(1, 4), slice(None, None, 2), 3)
    np.testing.assert_array_equal(np.asarray(view), expected)
    with pytest.raises(IndexError):
        view[1]
    with pytest.raises(TypeError):
        view[[0, 1]]


def test_as_channels_first_cases():
    vol = np.zeros((4, 5, 6))
    assert as_channels_first(vol, "ZYX").shape == (1, 4, 5, 6)
    assert as_channels_first(vol, "CYX") is vol
    assert as_channels_first(vol, None, spatial_ndim=3).shape == (1, 4, 5, 6)
    assert as_channels_first(vol, None, spatial_ndim=2) is vol
    with pytest.raises(InputError, match="spatial axes"):
        as_channels_first(vol, "ZYX", spatial_ndim=2)
    with pytest.raises(InputError, match="time points"):
        as_channels_first(np.zeros((2, 5, 6)), "TYX")
    with pytest.raises(InputError):
        as_channels_first(np.zeros((2, 3, 4, 5, 6)), None, spatial_ndim=2)
