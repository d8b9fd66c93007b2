import itertools
import os

import numpy as np
import pytest
import torch

import useg.inference.dask as dp
from useg.cli import main
from useg.errors import ConfigError, InputError
from useg.inference.predict import predict
from useg.inference.tile_choice import tile_geometry as _geometry
from useg.inference.tiling import plan_tiles, predict_tiled
from useg.io.arrays import mirror_indices
from useg.io.chunked import create_array, open_array
from useg.nets import UNet, UNetConfig
from useg.nets.checkpoint import save_model

pytest.importorskip("zarr")
pytest.importorskip("dask")

SHAPE3 = (24, 64, 64)
TILE3 = (32, 56, 56)  # stride (8, 16, 16): 3 x 4 x 4 tiles
BLOCK3 = (8, 32, 32)  # 3 x 2 x 2 blocks of 1 x 2 x 2 tiles


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # Tiny networks gain nothing from intra-op threads, and on a shared machine waiting
    # threads cost several times the work; the workers below use one thread each too.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net(cfg, seed=0):
    net = UNet(cfg).eval()
    net.reset_parameters(torch.Generator().manual_seed(seed))
    # Non-zero biases, so that a wrong padding or context cannot hide behind zeros.
    with torch.no_grad():
        for m in net.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(seed + 1))
    return net


@pytest.fixture(scope="module")
def case3d(tmp_path_factory):
    """A tiny 3D net (anisotropic pooling), its model file, a uint8 zarr volume of 4 x 4 x 4
    chunks, and the single-process prediction."""
    folder = tmp_path_factory.mktemp("case3d")
    net = _net(UNetConfig(ndim=3, width=2, depth=2, classes=2, pool=((1, 2, 2), (2, 2, 2))))
    model = save_model(net, folder / "m.safetensors")
    vol = np.random.default_rng(3).integers(0, 256, SHAPE3).astype(np.uint8)
    spec = f"{folder}/vol.zarr/raw"
    create_array(spec, SHAPE3, np.uint8, (6, 16, 16), spacing=(2.0, 0.5, 0.5), axes="ZYX")[:] = vol
    ref = predict(net, vol, tile=TILE3, device="cpu")
    return {"net": net, "model": str(model), "vol": vol, "spec": spec, "ref": ref}


def _read(spec):
    return open_array(spec)[0][:]


def test_3d_on_process_workers_equals_single_process_predict(case3d, tmp_path):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "out.zarr"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        result = dp.predict_dask(
            case3d["model"], case3d["spec"], f"{out}/probs", labels=f"{out}/labels",
            block=BLOCK3, tile=TILE3, scheduler=client, progress=False,
        )
        # An in-memory volume goes to the workers once (scattered), not per block.
        mem = dp.predict_dask(case3d["model"], case3d["vol"], labels=tmp_path / "mem.zarr",
                              block=BLOCK3, tile=TILE3, scheduler=client, progress=False)
    assert result["blocks"] == 12 and len(result["computed"]) == 12 and result["skipped"] == 0
    assert result["block"] == BLOCK3 and result["block_counts"] == (3, 2, 2)
    probs, meta = open_array(f"{out}/probs")
    assert meta["chunks"] == (2, *BLOCK3) and meta["axes"] == "CZYX"
    assert meta["spacing"] == (2.0, 0.5, 0.5)  # carried over from the input
    assert np.array_equal(probs[:], case3d["ref"])
    labels = _read(f"{out}/labels")
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.argmax(case3d["ref"], axis=0))
    assert len(mem["computed"]) == 12
    np.testing.assert_array_equal(_read(tmp_path / "mem.zarr"), labels)


def test_2d_same_padding_multichannel_hdf5_with_tta_equals_predict(tmp_path, rng):
    pytest.importorskip("h5py")
    net = _net(UNetConfig(ndim=2, width=2, depth=2, padding="same", in_channels=2, classes=3))
    image = rng.standard_normal((2, 90, 130)).astype(np.float32)
    spec = f"{tmp_path}/img.h5:/raw"
    ds = create_array(spec, image.shape, image.dtype, (2, 32, 32))
    ds[:] = image
    ds.file.close()
    tile = 80  # margin 24, stride 32: 3 x 5 tiles in blocks of 2 x 2 tiles
    geom = _geometry(net, image.shape[1:], tile, torch.device("cpu"), True)
    assert min(geom[2]) > 0  # a discarded margin: tile positions matter for same padding
    ref = predict(net, image, tile=tile, tta=True, device="cpu")
    result = dp.predict_dask(net, spec, tmp_path / "p.zarr", block=64, tile=tile, tta=True,
                             scheduler="threads", workers=2, progress=False)
    assert result["blocks"] == 6
    assert np.array_equal(_read(tmp_path / "p.zarr"), ref)
    # The oracle can fail: blocks predicted on their own pixels (mirrored at block edges)
    # instead of on the whole image's tile grid disagree with the single-process result.
    region = dp.plan_blocks(plan_tiles(image.shape[1:], *geom), 64).region((1, 1))
    naive = predict(net, image[(slice(None), *region)], tile=tile, tta=True, device="cpu")
    assert np.abs(naive - ref[(slice(None), *region)]).max() > 1e-3


@pytest.mark.parametrize(
    "shape, tile, halo, margin, step, block",
    [
        ((100, 300), 44, 20, 0, 4, 64),
        ((23, 45, 38), (36, 44, 52), (12, 8, 8), (0, 4, 4), (2, 4, 4), (5, 17, 100)),
        ((301,), 100, 10, 8, 8, 1),
        ((57, 61), 30, 0, 6, 2, None),
    ],
)
def test_blocks_partition_the_image_on_the_tile_grid(shape, tile, halo, margin, step, block):
    tp = plan_tiles(shape, tile, halo, margin, step)
    bp = dp.plan_blocks(tp, block)
    cover = np.zeros(shape, np.int32)
    chunk_owner = {}
    tiles = list(tp.tiles())
    for idx in bp.indices():
        region = bp.region(idx)
        cover[region] += 1
        for sl, cuts in zip(region, tp.boundaries(), strict=True):
            assert sl.start in cuts and sl.stop in cuts
        # Output chunks are the block shape: no chunk is written by two blocks.
        chunk_ranges = [range(s.start // b, (s.stop - 1) // b + 1)
                        for s, b in zip(region, bp.block, strict=True)]
        for chunk in itertools.product(*chunk_ranges):
            assert chunk_owner.setdefault(chunk, idx) == idx
        # The prefetched input box is the bounding box of what the block's tiles read.
        mine = [t for t in tiles if all(r.start <= d.start < r.stop
                                        for r, d in zip(region, t[1], strict=True))]
        assert mine
        for axis, box in enumerate(bp.input_box(idx)):
            read = np.concatenate([
                mirror_indices(t[0][axis], tp.tile[axis], shape[axis]) for t in mine])
            assert (box.start, box.stop) == (read.min(), read.max() + 1)
    assert np.all(cover == 1)


def test_region_prediction_equals_the_part_of_the_whole(rng):
    image = rng.standard_normal((2, 67, 129)).astype(np.float32)

    def corner(x):  # output pixel = leftmost context pixel: exposes any misplaced tile
        return x[:, :, : x.shape[2] - 14, : x.shape[3] - 14] * 2 + x[:, :, 14:, 14:]

    kw = dict(tile=(30, 44), halo=7, out_channels=2, step=4)
    whole = predict_tiled(corner, image, **kw)
    tp = plan_tiles(image.shape[1:], (30, 44), 7, 0, 4)
    bp = dp.plan_blocks(tp, (16, 60))
    assert len(bp) > 4
    for idx in bp.indices():
        region = bp.region(idx)
        part = predict_tiled(corner, image, region=region, **kw)
        np.testing.assert_array_equal(part, whole[(slice(None), *region)])
    with pytest.raises(ConfigError, match="tile boundaries"):
        predict_tiled(corner, image, region=(slice(0, 15), slice(0, 129)), **kw)


def test_interrupted_run_resumes_only_missing_blocks(case3d, tmp_path, monkeypatch):
    out = f"{tmp_path}/out.zarr/probs"
    real = dp.predict_block
    calls = []
    crash_at = (1, 1, 0)

    def crashing(job, index, image=None):
        calls.append(tuple(index))
        if tuple(index) == crash_at:
            # The worker dies after writing part of its block: data there, no marker.
            arr = open_array(job["probabilities"], "r+")[0]
            arr[(slice(None), *job["blocks"].region(index))] = 0.25
            raise RuntimeError("worker lost")
        return real(job, index, image)

    monkeypatch.setattr(dp, "predict_block", crashing)
    kw = dict(block=BLOCK3, tile=TILE3, progress=False)
    with pytest.raises(RuntimeError, match="worker lost"):
        dp.predict_dask(case3d["model"], case3d["spec"], out, scheduler="threads", workers=1,
                        **kw)
    done_dir = tmp_path / "out.zarr/probs/.useg-run/done"
    done_before = {tuple(int(i) for i in n.split("-")) for n in os.listdir(done_dir)}
    assert crash_at not in done_before and 0 < len(done_before) < 12

    calls.clear()
    monkeypatch.setattr(dp, "predict_block", lambda job, index, image=None: (
        calls.append(tuple(index)), real(job, index, image))[1])
    result = dp.predict_dask(case3d["model"], case3d["spec"], out, scheduler="threads", **kw)
    everything = set(itertools.product(range(3), range(2), range(2)))
    assert set(result["computed"]) == everything - done_before
    assert sorted(calls) == sorted(everything - done_before)  # nothing ran twice
    assert crash_at in result["computed"] and result["skipped"] == len(done_before)
    assert np.array_equal(_read(out), case3d["ref"])

    # A finished block whose marker is lost is recomputed (and only it); a marked one is not.
    victim = (2, 0, 1)
    arr = open_array(out, "r+")[0]
    region = dp.plan_blocks(
        plan_tiles(SHAPE3, *_geometry(case3d["net"], SHAPE3, TILE3, torch.device("cpu"),
                                      False)), BLOCK3).region(victim)
    arr[(slice(None), *region)] = -1.0
    os.remove(done_dir / "2-0-1")
    calls.clear()
    result = dp.predict_dask(case3d["model"], case3d["spec"], out, scheduler="threads", **kw)
    assert result["computed"] == [victim] and calls == [victim]
    assert np.array_equal(_read(out), case3d["ref"])

    # Nothing left: a third run computes nothing.
    calls.clear()
    result = dp.predict_dask(case3d["model"], case3d["spec"], out, scheduler="threads", **kw)
    assert result["computed"] == [] and calls == [] and result["skipped"] == 12


def test_other_settings_are_refused_and_overwrite_starts_afresh(case3d, tmp_path):
    out = tmp_path / "o.zarr"
    kw = dict(block=BLOCK3, scheduler="threads", progress=False)
    first = dp.predict_dask(case3d["net"], case3d["spec"], labels=out, tile=TILE3, **kw)
    assert len(first["computed"]) == 12
    # A network object is saved beside the output; the workers load it by path.
    assert (out / ".useg-run/model.safetensors").is_file()
    again = dp.predict_dask(case3d["net"], case3d["spec"], labels=out, tile=TILE3, **kw)
    assert again["computed"] == [] and again["skipped"] == 12
    with pytest.raises(ConfigError, match=r"o\.zarr: already exists, written with a different "
                                          r"tile; pass overwrite"):
        dp.predict_dask(case3d["net"], case3d["spec"], labels=out, tile=(32, 72, 72), **kw)
    other = _net(case3d["net"].config, seed=5)
    with pytest.raises(ConfigError, match="model_sha256"):
        dp.predict_dask(other, case3d["spec"], labels=out, tile=TILE3, **kw)
    fresh = dp.predict_dask(case3d["net"], case3d["spec"], labels=out, tile=TILE3,
                            overwrite=True, **kw)
    assert len(fresh["computed"]) == 12
    np.testing.assert_array_equal(_read(out), np.argmax(case3d["ref"], axis=0))


def test_bad_requests_fail_with_one_line_naming_the_path(case3d, tmp_path):
    with pytest.raises(ConfigError, match="output"):
        dp.predict_dask(case3d["model"], case3d["spec"])
    with pytest.raises(ConfigError, match=r"out\.h5:/p: block-parallel prediction writes zarr"):
        dp.predict_dask(case3d["model"], case3d["spec"], f"{tmp_path}/out.h5:/p")
    with pytest.raises(InputError, match=r"nope\.zarr/raw: no such file"):
        dp.predict_dask(case3d["model"], f"{tmp_path}/nope.zarr/raw", tmp_path / "o.zarr")
    two = f"{tmp_path}/two.zarr/raw"
    create_array(two, (2, *SHAPE3), np.uint8, (1, 8, 32, 32), axes="CZYX")
    with pytest.raises(InputError, match=r"two\.zarr/raw: image has 2 channel\(s\)"):
        dp.predict_dask(case3d["model"], two, tmp_path / "o.zarr")
    with pytest.raises(ConfigError, match="scheduler"):
        dp.predict_dask(case3d["model"], case3d["spec"], tmp_path / "o.zarr",
                        scheduler="gpu-please", tile=TILE3, progress=False)
    # An in-memory image is "image" in messages unless the caller names it (a file read).
    with pytest.raises(InputError, match=r"^image: image has 2 channel\(s\)"):
        dp.predict_dask(case3d["model"], np.zeros((2, *SHAPE3), np.float32), tmp_path / "m.zarr")
    with pytest.raises(InputError, match=r"^vol\.tif: image has 2 channel\(s\)"):
        dp.predict_dask(case3d["model"], np.zeros((2, *SHAPE3), np.float32), tmp_path / "m.zarr",
                        name="vol.tif")


def test_cli_dask_writes_probs_and_labels(case3d, tmp_path, capsys):
    out = tmp_path / "res.zarr"
    argv = ["predict", case3d["spec"], "--model", case3d["model"], "--out", str(out), "--dask",
            "--scheduler", "threads", "--tile", "32x56x56", "--block", "8x32x32", "--device",
            "cpu", "--quiet"]
    assert main(argv) == 0
    assert "12 blocks computed, 0 already done, of 12" in capsys.readouterr().out
    assert np.array_equal(_read(f"{out}/probs"), case3d["ref"])
    np.testing.assert_array_equal(_read(f"{out}/labels"), np.argmax(case3d["ref"], axis=0))
    assert main(argv) == 0
    assert "0 blocks computed, 12 already done" in capsys.readouterr().out
    assert main([*argv[:2], case3d["spec"], *argv[2:]]) == 2
    assert "one INPUT" in capsys.readouterr().err


def test_batch_statistics_predict_as_one_block_or_refuse(tmp_path):
    # Batch norm with the statistics of the batch: the output depends on the tile, so the
    # whole volume is one tile and one block, whatever block size was asked for.
    net = _net(UNetConfig(ndim=3, width=2, depth=1, classes=2, norm="batch", batch_stats=True))
    vol = np.random.default_rng(4).integers(0, 256, (12, 20, 28)).astype(np.uint8)
    with pytest.raises(ConfigError, match="depends on the tile"):
        dp.predict_dask(net, vol, tmp_path / "tiled.zarr", block=8, tile=20, progress=False,
                        scheduler="synchronous")
    result = dp.predict_dask(net, vol, tmp_path / "o.zarr", block=8, progress=False,
                             scheduler="synchronous")
    assert result["blocks"] == 1
    np.testing.assert_array_equal(_read(tmp_path / "o.zarr"), predict(net, vol, device="cpu"))


def test_a_costly_tile_is_named_once_not_once_per_block(case3d, tmp_path):
    # TILE3 keeps little of its output (the tests want many tiles): one note for the volume,
    # none from its 12 blocks.
    from useg.errors import TileWarning

    with pytest.warns(TileWarning) as record:
        dp.predict_dask(case3d["net"], case3d["spec"], labels=tmp_path / "o.zarr", tile=TILE3,
                        block=BLOCK3, scheduler="threads", progress=False)
    notes = [str(w.message) for w in record if issubclass(w.category, TileWarning)]
    assert len(notes) == 1 and "times the work of the default tile" in notes[0]


def test_another_in_memory_image_of_the_same_shape_does_not_resume_the_run(case3d, tmp_path):
    # No file names an in-memory image: its values must, or the second image would be handed
    # the first one's result as "already done".
    out = tmp_path / "mem.zarr"
    first = dp.predict_dask(case3d["model"], case3d["vol"], out, block=BLOCK3, tile=TILE3,
                            scheduler="synchronous", progress=False)
    assert first["skipped"] == 0
    again = dp.predict_dask(case3d["model"], case3d["vol"].copy(), out, block=BLOCK3,
                            tile=TILE3, scheduler="synchronous", progress=False)
    assert again["skipped"] == again["blocks"]  # the same values: resumed, nothing to do
    other = 255 - case3d["vol"]
    with pytest.raises(ConfigError, match="different input"):
        dp.predict_dask(case3d["model"], other, out, block=BLOCK3, tile=TILE3,
                        scheduler="synchronous", progress=False)


def test_an_input_store_rewritten_since_the_run_began_does_not_resume_it(case3d, tmp_path):
    # Same spec, shape and type, other values: resuming would join blocks of two images.
    spec = str(tmp_path / "in.zarr" / "raw")
    create_array(spec, SHAPE3, np.uint8, (6, 16, 16), axes="ZYX")[:] = case3d["vol"]
    out = tmp_path / "o.zarr"
    kw = dict(block=BLOCK3, tile=TILE3, scheduler="synchronous", progress=False)
    assert dp.predict_dask(case3d["model"], spec, out, **kw)["skipped"] == 0
    assert dp.predict_dask(case3d["model"], spec, out, **kw)["skipped"] > 0  # untouched: resumed
    open_array(spec, "r+")[0][:] = 255 - case3d["vol"]
    with pytest.raises(ConfigError, match="different input"):
        dp.predict_dask(case3d["model"], spec, out, **kw)


def test_workers_with_a_scheduler_that_takes_none_is_refused(case3d, tmp_path):
    with pytest.raises(ConfigError, match="does not take a number of workers"):
        dp.predict_dask(case3d["model"], case3d["vol"], tmp_path / "w.zarr", block=BLOCK3,
                        tile=TILE3, scheduler="synchronous", workers=8, progress=False)


def test_a_corrupt_chunk_of_the_input_is_one_line(case3d, tmp_path, capsys):
    from useg.cli import main

    spec = tmp_path / "bad.zarr" / "raw"
    create_array(str(spec), SHAPE3, np.uint8, (6, 16, 16), axes="ZYX")[:] = case3d["vol"]
    chunks = [p for p in spec.rglob("*") if p.is_file() and p.name not in
              ("zarr.json", ".zarray", ".zattrs", ".zgroup")]
    assert chunks
    chunks[len(chunks) // 2].write_bytes(b"garbage")  # a chunk its codec cannot decode
    code = main(["predict", str(spec), "--model", str(case3d["model"]), "--out",
                 str(tmp_path / "out.zarr"), "--dask", "--scheduler", "synchronous",
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "cannot read" in err and "bad.zarr" in err


def test_dask_labels_follow_the_model_operating_point(case3d, tmp_path):
    # A two-class model whose header states an operating point: class 1 wherever its
    # probability exceeds it, as useg predict writes for image files.
    model = save_model(case3d["net"], tmp_path / "op.safetensors",
                       {"operating_point": {"threshold_on_probabilities_1": 0.45}})
    out = tmp_path / "res.zarr"
    assert main(["predict", case3d["spec"], "--model", str(model), "--out", str(out), "--dask",
                 "--scheduler", "threads", "--tile", "32x56x56", "--block", "8x32x32",
                 "--device", "cpu", "--quiet"]) == 0
    probs = _read(f"{out}/probs")
    labels = _read(f"{out}/labels")
    np.testing.assert_array_equal(labels, probs[1] > 0.45)
    # The threshold makes a difference here, so the test could fail.
    assert not np.array_equal(labels, np.argmax(probs, axis=0))
