"""Tests of useg.io: axis order, spacing, round trips, errors, atomic writes, listing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from useg import io
from useg.errors import InputError
from useg.io import (
    atomic_write,
    list_images,
    natural_key,
    pair_by_stem,
    read_image,
    read_json,
    read_labels,
    write_image,
    write_json,
)
from useg.io.datasets import dataset


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# round trips


def test_png_uint8_round_trip(tmp_path, rng):
    a = rng.integers(0, 256, (17, 23), dtype=np.uint8)
    p = write_image(tmp_path / "a.png", a)
    img, meta = read_image(p)
    assert img.shape == (1, 17, 23) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0], a)
    assert meta == {"spacing": None, "unit": None, "axes": "CYX", "dtype": "uint8",
                    "path": str(p)}
    # What was written is a genuine PNG that Pillow reads the same way.
    with Image.open(p) as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im), a)


def test_png_uint16_round_trip_with_spacing(tmp_path, rng):
    a = rng.integers(0, 65536, (9, 14), dtype=np.uint16)
    p = write_image(tmp_path / "a.png", a[None], axes="CYX", spacing=(0.3, 0.15))
    img, meta = read_image(p)
    assert img.dtype == np.uint16
    np.testing.assert_array_equal(img[0], a)
    np.testing.assert_allclose(meta["spacing"], (0.3, 0.15), rtol=1e-6)


def test_tiff_uint16_round_trip(tmp_path, rng):
    a = rng.integers(0, 65536, (31, 7), dtype=np.uint16)
    p = write_image(tmp_path / "a.tif", a)
    img, meta = read_image(p)
    assert img.shape == (1, 31, 7) and img.dtype == np.uint16
    np.testing.assert_array_equal(img[0], a)
    assert meta["axes"] == "CYX" and meta["spacing"] is None
    # Also an ImageJ file that tifffile itself recognises.
    with tifffile.TiffFile(p) as tif:
        assert tif.is_imagej


def test_tiff_float32_stack_with_spacing(tmp_path, rng):
    a = rng.normal(size=(6, 11, 13)).astype(np.float32)
    p = write_image(tmp_path / "s.tif", a, axes="ZYX", spacing=(2.5, 0.4, 0.2))
    img, meta = read_image(p)
    assert img.shape == (1, 6, 11, 13) and img.dtype == np.float32
    np.testing.assert_array_equal(img[0], a)
    assert meta["axes"] == "CZYX" and meta["dtype"] == "float32"
    np.testing.assert_allclose(meta["spacing"], (2.5, 0.4, 0.2), rtol=1e-6)
    # The ImageJ calibration is what Fiji would show.
    with tifffile.TiffFile(p) as tif:
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.5)
        assert tif.imagej_metadata["unit"] == "micron"
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_tiff_czyx_hyperstack_round_trip(tmp_path, rng):
    a = rng.integers(0, 256, (2, 4, 5, 6), dtype=np.uint8)
    p = write_image(tmp_path / "h.tif", a, spacing=(1.0, 0.5, 0.5))
    img, meta = read_image(p)
    np.testing.assert_array_equal(img, a)
    assert meta["axes"] == "CZYX"
    with tifffile.TiffFile(p) as tif:
        assert tif.series[0].axes == "ZCYX"  # ImageJ's own order on disk


@pytest.mark.parametrize("dtype", [np.int32, np.float64, np.uint32, np.int8])
def test_plain_tiff_types_keep_dtype_and_exact_spacing(tmp_path, rng, dtype):
    a = rng.integers(-100 if np.dtype(dtype).kind != "u" else 0, 100, (3, 8, 9)).astype(dtype)
    p = write_image(tmp_path / "p.tif", a, axes="ZYX", spacing=(0.235, 0.15, 0.15), compress=False)
    img, meta = read_image(p)
    assert img.dtype == dtype
    np.testing.assert_array_equal(img[0], a)
    assert meta["spacing"] == (0.235, 0.15, 0.15)  # exact: stored as JSON, not as rationals
    if np.dtype(dtype).kind in "iu":
        lab, lmeta = read_labels(p)
        assert lab.dtype == dtype and lmeta["axes"] == "ZYX"
        np.testing.assert_array_equal(lab, a)


def test_rgb_png_reads_as_three_channels(tmp_path, rng):
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    img, meta = read_image(tmp_path / "c.png")
    assert img.shape == (3, 10, 12) and meta["axes"] == "CYX"
    np.testing.assert_array_equal(img, np.moveaxis(rgb, -1, 0))


def test_rgba_png_and_tiff_drop_alpha(tmp_path, rng):
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    tifffile.imwrite(tmp_path / "c.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    for name in ("c.png", "c.tif"):
        img, _ = read_image(tmp_path / name)
        np.testing.assert_array_equal(img, np.moveaxis(rgba[..., :3], -1, 0))


def test_rgb_tiff_and_grayscale_alpha_png(tmp_path, rng):
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    img, _ = read_image(tmp_path / "c.tif")
    np.testing.assert_array_equal(img, np.moveaxis(rgb, -1, 0))
    la = rng.integers(0, 256, (5, 6, 2), dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "g.png")
    img, _ = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(img, la[None, ..., 0])


# ---------------------------------------------------------------------------------------------
# axis order


def test_plain_stack_axis_order_pinned(tmp_path):
    # Each page holds its own index so a transposition cannot go unnoticed.
    stack = np.stack([np.full((20, 30), z, np.uint8) for z in range(5)])
    stack[:, 3, 7] = 200
    tifffile.imwrite(tmp_path / "s.tif", stack)
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        assert len(tif.pages) == 5  # a plain multi-page file
    img, meta = read_image(tmp_path / "s.tif")
    assert img.shape == (1, 5, 20, 30) and meta["axes"] == "CZYX"
    for z in range(5):
        assert img[0, z, 0, 0] == z
    assert (img[0, :, 3, 7] == 200).all()
    assert meta["spacing"] is None


def test_plain_stack_as_channels_with_ndim2_or_channel_axis(tmp_path, rng):
    a = rng.integers(0, 256, (3, 8, 9), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", a, photometric="minisblack")  # 3 pages, not RGB
    img, meta = read_image(tmp_path / "s.tif", ndim=2)
    assert img.shape == (3, 8, 9) and meta["axes"] == "CYX"
    np.testing.assert_array_equal(img, a)
    img2, _ = read_image(tmp_path / "s.tif", channel_axis=0)
    np.testing.assert_array_equal(img2, a)


def test_channel_axis_last(tmp_path, rng):
    a = rng.integers(0, 256, (8, 9, 2), dtype=np.uint8)  # two channels stored last, no metadata
    tifffile.imwrite(tmp_path / "s.tif", a, photometric="minisblack", planarconfig="contig")
    img, _ = read_image(tmp_path / "s.tif", channel_axis=-1)
    np.testing.assert_array_equal(img, np.moveaxis(a, -1, 0))
    with pytest.raises(InputError, match="channel_axis=3"):
        read_image(tmp_path / "s.tif", channel_axis=3)


def test_ndim_mismatch_raises(tmp_path):
    write_image(tmp_path / "a.tif", np.zeros((4, 5), np.uint8))
    with pytest.raises(InputError, match=r"a\.tif.*3D volume was expected"):
        read_image(tmp_path / "a.tif", ndim=3)
    write_image(tmp_path / "v.tif", np.zeros((3, 4, 5), np.uint8), axes="ZYX")
    with pytest.raises(InputError, match=r"v\.tif.*2D image was expected"):
        read_image(tmp_path / "v.tif", ndim=2)  # an explicit Z axis is never taken as channels


def test_imagej_hyperstack_written_by_tifffile(tmp_path, rng):
    # Z=3, C=2 as ImageJ stores them, calibrated in nanometres.
    zcyx = rng.integers(0, 65536, (3, 2, 7, 8), dtype=np.uint16)
    tifffile.imwrite(
        tmp_path / "ij.tif", zcyx, imagej=True, resolution=(1 / 4.0, 1 / 5.0),
        metadata={"axes": "ZCYX", "spacing": 50.0, "unit": "nm"},
    )
    img, meta = read_image(tmp_path / "ij.tif")
    np.testing.assert_array_equal(img, np.moveaxis(zcyx, 1, 0))
    assert meta["axes"] == "CZYX"
    np.testing.assert_allclose(meta["spacing"], (0.05, 0.005, 0.004), rtol=1e-6)


def test_imagej_time_and_singleton_axes(tmp_path, rng):
    tzcyx = rng.integers(0, 256, (1, 4, 1, 6, 7), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "t.tif", tzcyx, imagej=True, metadata={"axes": "TZCYX"})
    img, meta = read_image(tmp_path / "t.tif")
    assert img.shape == (1, 4, 6, 7) and meta["axes"] == "CZYX"
    np.testing.assert_array_equal(img[0], tzcyx[0, :, 0])
    both = rng.integers(0, 256, (2, 3, 6, 7), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "tz.tif", both, imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(InputError, match=r"tz\.tif.*more axes"):
        read_image(tmp_path / "tz.tif")


def test_ome_tiff_axes_and_physical_size(tmp_path, rng):
    zcyx = rng.integers(0, 65536, (4, 2, 6, 5), dtype=np.uint16)
    tifffile.imwrite(
        tmp_path / "o.ome.tif", zcyx, ome=True,
        metadata={
            "axes": "ZCYX", "PhysicalSizeX": 150.0, "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.2, "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "µm",
        },
    )
    img, meta = read_image(tmp_path / "o.ome.tif")
    np.testing.assert_array_equal(img, np.moveaxis(zcyx, 1, 0))
    assert meta["axes"] == "CZYX"
    np.testing.assert_allclose(meta["spacing"], (1.5, 0.2, 0.15), rtol=1e-9)


@pytest.mark.parametrize(
    ("unit", "res", "expected"),
    [("CENTIMETER", 10000.0, 1.0), ("INCH", 25400.0 / 0.5, 0.5), ("NONE", 0.5, 2.0)],
)
def test_tiff_resolution_tags(tmp_path, unit, res, expected):
    tifffile.imwrite(
        tmp_path / "r.tif", np.zeros((4, 4), np.uint8), resolution=(res, res),
        resolutionunit=unit,
    )
    _, meta = read_image(tmp_path / "r.tif")
    np.testing.assert_allclose(meta["spacing"], (expected, expected), rtol=1e-6)


def test_3d_without_z_spacing_has_no_spacing(tmp_path):
    # XY calibrated, Z unknown: a partial spacing would be misleading, so there is none.
    tifffile.imwrite(
        tmp_path / "r.tif", np.zeros((3, 4, 4), np.uint8), resolution=(1e4, 1e4),
        resolutionunit="CENTIMETER", photometric="minisblack",
    )
    img, meta = read_image(tmp_path / "r.tif")
    assert img.shape == (1, 3, 4, 4)
    assert meta["spacing"] is None


# ---------------------------------------------------------------------------------------------
# labels


def test_read_labels_rgb_equal_channels_ok_else_error(tmp_path, rng):
    lab = rng.integers(0, 5, (6, 7), dtype=np.uint8)
    Image.fromarray(np.stack([lab] * 3, -1), "RGB").save(tmp_path / "eq.png")
    out, meta = read_labels(tmp_path / "eq.png")
    assert out.shape == (6, 7) and meta["axes"] == "YX"
    np.testing.assert_array_equal(out, lab)
    rgb = np.stack([lab, lab, lab + 1], -1).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "col.png")
    with pytest.raises(InputError, match=r"col\.png.*channels that differ"):
        read_labels(tmp_path / "col.png")


def test_read_labels_palette_png_gives_indices(tmp_path, rng):
    idx = rng.integers(0, 4, (6, 7), dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    im.save(tmp_path / "p.png")
    out, _ = read_labels(tmp_path / "p.png")
    np.testing.assert_array_equal(out, idx)
    img, _ = read_image(tmp_path / "p.png")  # as an image, the colours
    assert img.shape == (3, 6, 7)
    assert tuple(img[:, idx == 1][:, 0]) == (255, 0, 0)


def test_read_labels_float_and_3d(tmp_path):
    lab = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_image(tmp_path / "f.tif", lab, axes="ZYX")
    out, meta = read_labels(tmp_path / "f.tif")
    assert out.dtype == np.int32 and meta["axes"] == "ZYX" and meta["dtype"] == "float32"
    np.testing.assert_array_equal(out, lab)
    write_image(tmp_path / "h.tif", lab + 0.5, axes="ZYX")
    with pytest.raises(InputError, match=r"h\.tif.*non-integer"):
        read_labels(tmp_path / "h.tif")


def test_read_labels_uint16_png(tmp_path):
    lab = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    write_image(tmp_path / "l.png", lab)
    out, _ = read_labels(tmp_path / "l.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, lab)


# ---------------------------------------------------------------------------------------------
# errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.tif: file not found"):
        read_image(tmp_path / "nope.tif")
    with pytest.raises(InputError, match=r"nope\.png: file not found"):
        read_labels(tmp_path / "nope.png")


@pytest.mark.parametrize("name", ["bad.tif", "bad.png"])
def test_corrupt_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(InputError, match=name.replace(".", r"\.") + ".*corrupt") as err:
        read_image(tmp_path / name)
    assert "\n" not in str(err.value)


def test_truncated_files(tmp_path, rng):
    a = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    for name in ("t.png", "t.tif"):
        p = write_image(tmp_path / name, a, compress=False)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            read_image(p)


def test_empty_image(tmp_path):
    with pytest.warns(UserWarning):  # tifffile warns that this file does not conform
        tifffile.imwrite(tmp_path / "e.tif", np.zeros((0, 10), np.uint8))
    with pytest.raises(InputError, match=r"e\.tif: empty image"):
        read_image(tmp_path / "e.tif")
    with pytest.raises(InputError, match="empty"):
        write_image(tmp_path / "w.tif", np.zeros((0, 3), np.uint8))


def test_nan_and_inf_rejected(tmp_path):
    a = np.ones((4, 5), np.float32)
    a[1, 2] = np.nan
    a[3, 3] = np.inf
    write_image(tmp_path / "n.tif", a)
    with pytest.raises(InputError, match=r"n\.tif: 2 pixels are NaN or infinite"):
        read_image(tmp_path / "n.tif")


def test_unsupported_format_and_folder(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(InputError, match=r"a\.jpg: unsupported format '\.jpg'"):
        read_image(tmp_path / "a.jpg")
    (tmp_path / "d.tif").mkdir()
    with pytest.raises(InputError, match=r"d\.tif: is a folder"):
        read_image(tmp_path / "d.tif")
    with pytest.raises(InputError, match="unsupported format"):
        write_image(tmp_path / "x.jpg", np.zeros((2, 2), np.uint8))


def test_png_disguised_as_other_format(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "j.png", format="TIFF")
    with pytest.raises(InputError, match=r"j\.png: not a PNG file \(it holds TIFF data\)"):
        read_image(tmp_path / "j.png")


def test_write_errors(tmp_path):
    with pytest.raises(InputError, match="PNG holds only uint8 or uint16"):
        write_image(tmp_path / "f.png", np.zeros((3, 3), np.float32))
    with pytest.raises(InputError, match="PNG holds only 2D"):
        write_image(tmp_path / "v.png", np.zeros((2, 3, 3), np.uint8), axes="ZYX")
    with pytest.raises(InputError, match="ambiguous"):
        write_image(tmp_path / "a.tif", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(InputError, match="spacing must hold 3"):
        write_image(tmp_path / "s.tif", np.zeros((2, 3, 3), np.uint8), axes="ZYX", spacing=(1, 1))
    with pytest.raises(InputError, match="do not match"):
        write_image(tmp_path / "b.tif", np.zeros((3, 3), np.uint8), axes="CYX")
    assert _files(tmp_path) == []  # nothing written, no temporary files left


# ---------------------------------------------------------------------------------------------
# atomic writes and JSON


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "m.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".bin" and tmp.name.startswith(".")
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not replaced before the body finishes
    assert target.read_bytes() == b"new"
    assert _files(tmp_path) == ["m.bin"]


def test_atomic_write_keeps_old_file_when_body_fails(tmp_path):
    target = tmp_path / "m.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash midway")
    assert target.read_bytes() == b"old"
    assert _files(tmp_path) == ["m.bin"]


def test_write_into_missing_folder(tmp_path):
    with pytest.raises(InputError, match=r"a\.tif: cannot write: folder .*nope does not exist"):
        write_image(tmp_path / "nope" / "a.tif", np.zeros((2, 2), np.uint8))
    with pytest.raises(InputError, match="does not exist"):
        write_json(tmp_path / "nope" / "a.json", {})


def test_atomic_write_body_that_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "x.json"):
            pass
    assert _files(tmp_path) == []


def test_write_image_interrupted_midway_keeps_old_file(tmp_path, monkeypatch):
    old = np.arange(12, dtype=np.uint8).reshape(3, 4)
    p = write_image(tmp_path / "a.tif", old)
    before = p.read_bytes()

    real = tifffile.imwrite

    def crashing_imwrite(file, data, **kwargs):
        real(file, data, **kwargs)
        with open(file, "r+b") as fh:  # leave a half-written file behind, then fail
            fh.truncate(os.path.getsize(file) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", crashing_imwrite)
    with pytest.raises(KeyboardInterrupt):
        write_image(p, np.zeros((30, 40), np.uint8))
    assert p.read_bytes() == before
    assert _files(tmp_path) == ["a.tif"]
    np.testing.assert_array_equal(read_image(p)[0][0], old)


def test_write_json_round_trip(tmp_path):
    obj = {"a": np.float32(0.25), "b": np.arange(3), "c": (1, 2), "p": tmp_path / "x", "n": None}
    p = write_json(tmp_path / "r.json", obj)
    assert read_json(p) == {"a": 0.25, "b": [0, 1, 2], "c": [1, 2], "p": str(tmp_path / "x"),
                            "n": None}
    assert json.loads(p.read_text()) == read_json(p)
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert _files(tmp_path) == ["r.json"]


def test_read_json_errors(tmp_path):
    with pytest.raises(InputError, match=r"no\.json: file not found"):
        read_json(tmp_path / "no.json")
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(InputError, match=r"b\.json: not a valid JSON"):
        read_json(tmp_path / "b.json")


# ---------------------------------------------------------------------------------------------
# listing and pairing


def test_natural_key_order():
    names = ["img10.tif", "img2.tif", "img1.png", "Img3.tif", "img02.tif", "a.tif", "img.tif"]
    assert sorted(names, key=natural_key) == [
        "a.tif", "img.tif", "img1.png", "img02.tif", "img2.tif", "Img3.tif", "img10.tif",
    ]


def test_list_images(tmp_path):
    for name in ["10.png", "2.tif", "1.TIFF", "3.txt", ".hidden.tif", "b.png"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.tif").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["1.TIFF", "2.tif", "10.png", "b.png"]
    assert [p.name for p in list_images(tmp_path, exts=(".png",))] == ["10.png", "b.png"]
    assert list_images(tmp_path / "2.tif") == [tmp_path / "2.tif"]
    with pytest.raises(InputError, match=r"3\.txt: not an image file"):
        list_images(tmp_path / "3.txt")
    with pytest.raises(InputError, match="no such file or folder"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no image files"):
        list_images(tmp_path / "empty")


def test_pair_by_stem(tmp_path):
    images = [Path("im/2.png"), Path("im/10.png"), Path("im/c.ome.tif")]
    labels = [Path("lab/10.tif"), Path("lab/c.tif"), Path("lab/2.tif")]
    assert pair_by_stem(images, labels) == [
        (Path("im/2.png"), Path("lab/2.tif")),
        (Path("im/10.png"), Path("lab/10.tif")),
        (Path("im/c.ome.tif"), Path("lab/c.tif")),
    ]
    with pytest.raises(InputError, match=r"im/10\.png: no label file"):
        pair_by_stem(images, [Path("lab/2.tif"), Path("lab/c.tif")])
    with pytest.raises(InputError, match=r"lab/9\.tif: no image file"):
        pair_by_stem(images, labels + [Path("lab/9.tif")])
    with pytest.raises(InputError, match=r"im/2\.tif: has the same name stem"):
        pair_by_stem(images + [Path("im/2.tif")], labels)


# ---------------------------------------------------------------------------------------------
# the shared real datasets


def _need(name: str) -> Path:
    root = dataset(name)
    if root is None:
        pytest.skip(f"dataset {name} not found; set USEG_DATA")
    return root


def test_real_isbi2012_png():
    root = _need("isbi2012")
    img, meta = read_image(root / "train" / "images" / "0.png")
    assert img.shape == (1, 512, 512) and img.dtype == np.uint8 and meta["axes"] == "CYX"
    # PROVENANCE.md: 4x4 nm pixels, but the PNG has no pHYs chunk, so nothing to read.
    assert meta["spacing"] is None
    lab, lmeta = read_labels(root / "train" / "labels" / "0.png")
    assert lab.shape == (512, 512) and lab.dtype == np.uint8 and lmeta["axes"] == "YX"
    assert set(np.unique(lab).tolist()) == {0, 255}  # PROVENANCE.md: exactly {0, 255}


def test_real_flyem_volume():
    root = _need("flyem_medulla_fibsem_3d")
    img, meta = read_image(root / "raw_zyx.tif")
    assert img.shape == (1, 160, 250, 250) and img.dtype == np.uint8
    assert meta["axes"] == "CZYX"
    # PROVENANCE.md: 10 nm isotropic; the TIFF stores no calibration (resolution 1/1, unit none).
    assert meta["spacing"] is None
    assert 26 <= int(img.min()) and int(img.max()) <= 217  # PROVENANCE.md range of the full cube
    lab, lmeta = read_labels(root / "labels_bodies_zyx.tif")
    assert lab.shape == (160, 250, 250) and lab.dtype == np.uint16 and lmeta["axes"] == "ZYX"
    # Orientation as PROVENANCE.md checks it: membranes (label changes along x) are darker.
    edge = lab[:, :, 1:] != lab[:, :, :-1]
    raw = img[0, :, :, 1:].astype(np.float64)
    assert raw[edge].mean() < raw[~edge].mean() - 10


def test_real_plantseg_ovule():
    root = _need("plantseg_ovule_3d")
    img, meta = read_image(root / "raw.tif")
    assert img.shape == (1, 32, 128, 128) and img.dtype == np.uint8
    # PROVENANCE.md: (0.235, 0.15, 0.15) um in the h5 attribute only; the TIFF holds none.
    assert meta["spacing"] is None
    lab, _ = read_labels(root / "labels.tif")
    assert lab.shape == (32, 128, 128) and lab.dtype == np.uint16 and int(lab.max()) == 918


def test_real_stardist_dsb2018():
    root = _need("stardist_dsb2018_sample2d")
    img, meta = read_image(root / "images" / "img2d.tif")
    assert img.shape == (1, 512, 512) and img.dtype == np.uint16 and meta["spacing"] is None
    assert int(img.max()) <= 235  # PROVENANCE.md: 8-bit range stored as uint16
    lab, _ = read_labels(root / "labels" / "img2d.tif")
    assert lab.shape == (512, 512) and len(np.unique(lab)) - 1 == 125  # 125 nuclei
    pairs = pair_by_stem(list_images(root / "images"), list_images(root / "labels"))
    assert [(a.name, b.name) for a, b in pairs] == [("img2d.tif", "img2d.tif")]


def test_module_exports():
    for name in io.__all__:
        assert hasattr(io, name)


# ---------------------------------------------------------------------------------------------
# the unit of the spacing


@pytest.mark.parametrize(("unit", "known"), [("CENTIMETER", True), ("NONE", False)])
def test_read_image_says_whether_the_spacing_has_a_unit(tmp_path, unit, known):
    tifffile.imwrite(tmp_path / "r.tif", np.zeros((4, 4), np.uint8), resolution=(0.5, 0.5),
                     resolutionunit=unit)
    _, meta = read_image(tmp_path / "r.tif")
    assert meta["spacing"] is not None
    assert meta["unit"] == ("micrometer" if known else None)


def test_no_spacing_has_no_unit(tmp_path):
    _, meta = read_image(write_image(tmp_path / "a.tif", np.zeros((4, 4), np.uint8)))
    assert meta["spacing"] is None and meta["unit"] is None


@pytest.mark.parametrize("name", ["f.tif", "i.tif", "l.nii.gz"])
@pytest.mark.parametrize("unit", ["micrometer", None])
def test_written_spacing_keeps_its_unit_or_its_absence(tmp_path, name, unit):
    if name.endswith(".nii.gz"):
        pytest.importorskip("nibabel")
    # float32 goes to an ImageJ hyperstack, int32 to a plain TIFF: both must keep the unit.
    arr = np.zeros((3, 4, 5), np.float32 if name.startswith("f") else np.int32)
    path = write_image(tmp_path / name, arr, axes="ZYX", spacing=(2.0, 0.5, 0.25), unit=unit)
    _, meta = read_image(path)
    np.testing.assert_allclose(meta["spacing"], (2.0, 0.5, 0.25), rtol=1e-6)
    assert meta["unit"] == unit


def test_png_without_a_unit_stores_no_spacing(tmp_path):
    # A PNG's pHYs chunk names metres or nothing; ratios of unknown unit are not made metres.
    path = write_image(tmp_path / "a.png", np.zeros((4, 6), np.uint8), spacing=(0.5, 0.25),
                       unit=None)
    assert read_image(path)[1]["spacing"] is None


def test_write_image_refuses_another_unit(tmp_path):
    with pytest.raises(InputError, match=r"a\.tif: unit must be 'micrometer' or None"):
        write_image(tmp_path / "a.tif", np.zeros((4, 4), np.uint8), spacing=(1, 1), unit="nm")
