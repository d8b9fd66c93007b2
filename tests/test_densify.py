"""Semi-automated (densify) and fully automated 3D segmentation from sparse slice annotations."""

import csv
import itertools
import json

import numpy as np
import pytest
import tifffile

from useg import io
from useg.cli import build_parser, main
from useg.errors import InputError
from useg.io.datasets import dataset
from useg.labels import IGNORE
from useg.nets import anisotropic_pools, output_shape, preset
from useg.nets.checkpoint import load_model, model_info
from useg.training.from_folders import build_config
from useg.training.samples import boundary_target, make_sample
from useg.workflows.densify import check_slices, fit_tile, min_volume_shape
from useg.workflows.synthetic import touching_cells

# Tiny network and few steps: these tests check plumbing and facts, not accuracy.
TINY = ["--width", "2", "--depth", "1", "--tile", "28", "--workers", "0", "--seed", "2",
        "--quiet", "--checkpoint-every", "4", "--log-every", "2"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("vol")
    image, cells = touching_cells((24, 48, 48), rng=3)
    io.write_image(root / "vol.tif", image, axes="CZYX")
    io.write_image(root / "cells.tif", cells.astype(np.uint16), axes="ZYX")
    return root, image, cells


def _losses(run):
    with open(run / "log.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


# ------------------------------------------------------------------------------ pooling rule


def _rule_oracle(spacing, depth):
    """The documented rule, written out per axis: pool while below 2x the finest current size."""
    size = list(map(float, spacing))
    levels = []
    for _ in range(depth):
        finest = min(size)
        level = []
        for a in range(len(size)):
            level.append(2 if size[a] / finest < 2 else 1)
        size = [s * f for s, f in zip(size, level, strict=True)]
        levels.append(tuple(level))
    return tuple(levels)


def test_anisotropic_pools_rule():
    assert anisotropic_pools((50, 4, 4), 4) == ((1, 2, 2),) * 3 + ((2, 2, 2),)
    assert anisotropic_pools((1, 1, 1), 3) == ((2, 2, 2),) * 3  # isotropic: the plain U-Net
    assert anisotropic_pools((0.235, 0.15, 0.15), 3) == ((2, 2, 2),) * 3  # within 2x
    assert anisotropic_pools((2, 1, 1), 2) == ((1, 2, 2), (2, 2, 2))  # exactly 2x: not below
    assert anisotropic_pools((1, 1, 5), 3) == ((2, 2, 1), (2, 2, 1), (2, 2, 2))
    assert anisotropic_pools((3, 1), 2) == ((1, 2), (2, 2))  # any number of axes
    rng = np.random.default_rng(0)
    for _ in range(200):
        spacing = tuple(rng.uniform(0.1, 40, 3))
        assert anisotropic_pools(spacing, 5) == _rule_oracle(spacing, 5)
    with pytest.raises(ValueError, match="positive"):
        anisotropic_pools((0, 1, 1), 2)


def test_cli_picks_pools_from_spacing(synthetic, tmp_path):
    root, _, _ = synthetic
    run = tmp_path / "aniso"
    assert main(["densify", str(root / "vol.tif"), "--labels", str(root / "cells.tif"),
                 "--slices", "z=4", "--out", str(run), "--iterations", "1", "--spacing",
                 "50,4,4", "--batch-stats", *TINY]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["net"]["pool"] == [[1, 2, 2]] and cfg["spacing"] == [50.0, 4.0, 4.0]
    model = load_model(run / "last.safetensors")
    assert model.meta["spacing"] == [50.0, 4.0, 4.0]
    # --batch-stats: densify then predicted the volume in one pass (tiles would be refused).
    assert model.config.batch_stats is True
    assert (run / "vol_labels.tif").exists()
    assert model.downs[0].pool.kernel_size == (1, 2, 2)
    # The volume states no voxel size: the results carry the one given, without a unit.
    meta = io.read_labels(run / "vol_labels.tif")[1]
    assert meta["spacing"] == pytest.approx((50.0, 4.0, 4.0), rel=1e-6) and meta["unit"] is None
    # --pool wins over the spacing rule; the files' spacing counts when --spacing is absent.
    def config(*options, file_spacing=None):
        args = build_parser().parse_args(["densify", "v.tif", "--out", "o", *options])
        return json.loads(json.dumps(build_config(args, 3, 1, file_spacing)))

    assert config("--spacing", "50,4,4", "--pool", "2x2x2")["net"]["pool"] == [[2, 2, 2]]
    assert config("--depth", "2", file_spacing=(5.0, 1.0, 1.0))["net"]["pool"] == [[1, 2, 2]] * 2
    assert config(file_spacing=(1.0, 1.0, 1.0))["net"]["pool"] is None
    assert config()["net"]["batch_stats"] is False  # cicek2016: running statistics to predict
    assert config("--running-stats")["net"]["batch_stats"] is False
    with pytest.raises(ValueError, match="--spacing needs 3 values"):
        config("--spacing", "4,4")


def test_fit_tile_and_minimum_volume():
    cfg = preset("cicek2016", width=4, depth=2)
    tile = fit_tile(cfg, (116, 132, 132), (24, 48, 48))
    out = output_shape(cfg, tile)
    assert out[0] <= 24 and output_shape(cfg, (tile[0] + 4, *tile[1:]))[0] > 24
    assert fit_tile(cfg, (116, 132, 132), (500, 500, 500)) == (116, 132, 132)
    assert min_volume_shape(cfg) == (4, 4, 4)
    with pytest.raises(InputError, match="a.tif: annotated slice 9 along Y is out of range"):
        check_slices({1: [9]}, (4, 9, 9), "a.tif")


# ------------------------------------------------------------------------------ targets


def _brute_boundary(ids, ignore):
    """Boundary by definition: a face neighbour with another id, neither of them ``ignore``."""
    out = np.zeros(ids.shape, np.int64)
    for p in itertools.product(*map(range, ids.shape)):
        if ids[p] == ignore:
            out[p] = IGNORE
            continue
        for a in range(ids.ndim):
            for d in (-1, 1):
                q = list(p)
                q[a] += d
                if 0 <= q[a] < ids.shape[a] and ids[tuple(q)] not in (ids[p], ignore):
                    out[p] = 1
    return out


def _brute_dilate(edge, width, ids, ignore):
    """Voxels within city-block distance ``width - 1`` of a boundary voxel."""
    pts = np.argwhere(edge == 1)
    out = np.zeros(edge.shape, np.int64)
    for p in itertools.product(*map(range, edge.shape)):
        if len(pts) and np.abs(pts - np.array(p)).sum(axis=1).min() <= width - 1:
            out[p] = 1
    out[ids == ignore] = IGNORE
    return out


def test_boundary_target_on_flyem_like_bodies():
    # FlyEM-like: every voxel belongs to a body (no membrane class), 0 on a few unlabeled voxels.
    rng = np.random.default_rng(5)
    seeds = rng.uniform(0, 10, (12, 3))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (6, 10, 10)], indexing="ij"), -1)
    ids = 1 + np.argmin(((grid[..., None, :] - seeds) ** 2).sum(-1), axis=-1)
    ids[rng.random(ids.shape) < 0.02] = 0
    edge = boundary_target(ids, 1, ignore=0)
    assert np.array_equal(edge, _brute_boundary(ids, 0))
    assert np.array_equal(boundary_target(ids, 2, ignore=0),
                          _brute_dilate(_brute_boundary(ids, 0), 2, ids, 0))
    root = dataset("flyem_medulla_fibsem_3d")
    if root is not None:  # the real bodies, a small crop
        bodies = tifffile.imread(root / "labels_bodies_zyx.tif")[40:46, 100:112, 100:112]
        assert np.array_equal(boundary_target(bodies, 1, ignore=0), _brute_boundary(bodies, 0))


def test_sparse_class_weights_balance_labelled_voxels(synthetic):
    _, image, cells = synthetic
    s = make_sample(image, cells, mode="boundary", slices={0: [3, 17], 2: [40]})
    labelled = s.target != IGNORE
    assert np.all(s.weight[~labelled] == 0)
    n = labelled.sum()
    for c in (0, 1):
        n_c = ((s.target == c) & labelled).sum()
        assert np.allclose(s.weight[s.target == c], n / (2 * n_c))  # w_c = N / (K N_c)
        assert np.isclose(s.weight[s.target == c].sum(), n / 2)  # each class weighs the same
    assert s.labelled is not None and len(s.labelled) == n  # tiles centre on annotated voxels


# ------------------------------------------------------------------------------ densify


def test_densify_synthetic_end_to_end(synthetic, tmp_path):
    root, _, cells = synthetic
    run = tmp_path / "run"
    assert main(["densify", str(root / "vol.tif"), "--labels", str(root / "cells.tif"),
                 "--slices", "z=5,18", "y=20", "x=30", "--out", str(run),
                 "--iterations", "4", *TINY]) == 0
    labels, _ = io.read_labels(run / "vol_labels.tif")
    probs, _ = io.read_image(run / "vol_probs.tif")
    assert labels.shape == cells.shape and set(np.unique(labels)) <= {0, 1}
    assert probs.shape == (2, *cells.shape)
    assert np.allclose(probs.sum(axis=0), 1, atol=1e-4)
    assert np.array_equal(labels, np.argmax(probs, axis=0))
    info = model_info(run / "last.safetensors")
    assert info["labels"]["mode"] == "boundary" and info["config"]["batch_stats"] is False
    assert [s for s, _ in _losses(run)] == [2, 4]
    # An existing run is not overwritten.
    assert main(["densify", str(root / "vol.tif"), "--labels", str(root / "cells.tif"),
                 "--slices", "z=5", "--out", str(run), *TINY]) == 2
    # useg train cannot resume it: one line saying which command can.
    err = io_capture(["train", "--resume", "--out", str(run), "--iterations", "6"])
    assert err[0] == 2 and "a 'useg densify' run; resume it with useg densify" in err[1]
    assert len(err[1].splitlines()) == 1
    # Its report shows the volume it densified, scored on the annotated voxels.
    page = tmp_path / "page.html"
    assert main(["report", str(run), "--out", str(page)]) == 0
    html = page.read_text()
    assert "The run densified one volume" in html and "records no data files" not in html
    assert f"{root / 'vol.tif'} / {root / 'cells.tif'}" in html  # what it trained on
    assert "<td>vol.tif</td><td>training</td>" in html.replace("\n", "")  # its scores' row


def io_capture(argv):
    import contextlib
    import io as text_io

    buffer = text_io.StringIO()
    with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(text_io.StringIO()):
        code = main(argv)
    return code, buffer.getvalue().strip()


def test_densify_refuses_results_of_another_run(synthetic, tmp_path):
    root, _, _ = synthetic
    out = tmp_path / "out"
    out.mkdir()
    (out / "vol_labels.tif").write_bytes(b"earlier result")
    argv = ["densify", str(root / "vol.tif"), "--labels", str(root / "cells.tif"), "--slices",
            "z=5", "--out", str(out), "--iterations", "1", *TINY]
    code, err = io_capture(argv)
    assert code == 2 and "vol_labels.tif: already exists; pass --overwrite" in err
    assert (out / "vol_labels.tif").read_bytes() == b"earlier result"
    assert sorted(p.name for p in out.iterdir()) == ["vol_labels.tif"]  # nothing trained
    assert main([*argv, "--overwrite"]) == 0
    assert io.read_labels(out / "vol_labels.tif")[0].shape == (24, 48, 48)


def test_densify_plantseg_crop(tmp_path):
    root = dataset("plantseg_ovule_3d")
    if root is None:
        pytest.skip("plantseg_ovule_3d not found; set USEG_DATA")
    raw = tifffile.imread(root / "raw.tif")[8:24, 32:96, 32:96]
    cells = tifffile.imread(root / "labels.tif")[8:24, 32:96, 32:96]
    sparse = np.zeros_like(cells)  # an annotator's volume: two slices drawn, 0 elsewhere
    sparse[4], sparse[:, 30] = cells[4], cells[:, 30]
    assert (cells > 0).all()
    io.write_image(tmp_path / "ovule.tif", raw, axes="ZYX")
    io.write_image(tmp_path / "sparse.tif", sparse, axes="ZYX")
    run = tmp_path / "ovule"
    assert main(["densify", str(tmp_path / "ovule.tif"), "--labels", str(tmp_path / "sparse.tif"),
                 "--unlabeled", "0", "--spacing", "0.235,0.15,0.15", "--out", str(run),
                 "--iterations", "4", *TINY]) == 0
    labels, _ = io.read_labels(run / "ovule_labels.tif")
    assert labels.shape == raw.shape
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["net"]["pool"] is None  # 0.235 / 0.15 < 2: isotropic enough to pool z
    assert cfg["unlabeled"] == 0 and cfg["spacing"] == [0.235, 0.15, 0.15]


def test_densify_resume_matches_uninterrupted(synthetic, tmp_path, monkeypatch):
    root, _, _ = synthetic
    args = ["densify", str(root / "vol.tif"), "--labels", str(root / "cells.tif"), "--slices",
            "z=6", "y=24", "--iterations", "4", "--no-augment", *TINY, "--checkpoint-every", "2",
            "--log-every", "1"]
    reference = tmp_path / "ref"
    assert main([*args, "--out", str(reference)]) == 0

    import useg.training.run_folder

    real_state = useg.training.run_folder.save_state

    def interrupt(*a, **kw):  # the run dies right after its first checkpoint (step 2)
        real_state(*a, **kw)
        raise KeyboardInterrupt

    run = tmp_path / "run"
    monkeypatch.setattr(useg.training.run_folder, "save_state", interrupt)
    assert main([*args, "--out", str(run)]) == 130
    monkeypatch.setattr(useg.training.run_folder, "save_state", real_state)
    assert not (run / "vol_labels.tif").exists()
    assert [s for s, _ in _losses(run)] == [1, 2]
    assert main(["densify", "--resume", "--out", str(run), "--quiet"]) == 0
    assert np.allclose(_losses(run), _losses(reference), rtol=1e-5)
    a, _ = io.read_image(run / "vol_probs.tif")
    b, _ = io.read_image(reference / "vol_probs.tif")
    assert np.allclose(a, b, atol=1e-5)
    # --resume of a folder without a densify run
    assert main(["densify", "--resume", "--out", str(tmp_path / "none")]) == 2


def test_densify_resume_extends_the_run_and_refuses_other_changes(synthetic, tmp_path, capsys):
    root, _, _ = synthetic
    run = tmp_path / "run"
    assert main(["densify", str(root / "vol.tif"), "--labels", str(root / "cells.tif"),
                 "--slices", "z=6", "--iterations", "2", "--no-augment", *TINY, "--out",
                 str(run)]) == 0
    state = (run / "state.safetensors").read_bytes()
    capsys.readouterr()
    for option, flag in ((["--lr", "0.5"], "--lr"), (["--slices", "z=7"], "--slices"),
                         (["--depth", "2"], "--depth")):
        code = main(["densify", "--resume", "--out", str(run), "--iterations", "4", *option])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and flag in err, err
    assert (run / "state.safetensors").read_bytes() == state
    assert (run / "vol_probs.tif").is_file()
    # Given as saved, or changing only how or how long the run goes: honoured.
    assert main(["densify", "--resume", "--out", str(run), "--iterations", "4", "--slices", "z=6",
                 "--no-augment", "--quiet", "--device", "cpu", "--no-probs"]) == 0
    assert [s for s, _ in _losses(run)] == [2, 4]
    assert json.loads((run / "config.json").read_text())["iterations"] == 4
    # The segmentation is written again from the longer-trained model; --no-probs is honoured,
    # and the probabilities of the earlier model are not left beside it.
    assert not (run / "vol_probs.tif").exists() and (run / "vol_labels.tif").is_file()
    assert "vol_probs.tif: removed" in capsys.readouterr().err
    assert load_model(run / "last.safetensors").meta["step"] == 4
    # The command that started the run, with --resume: its --tile was fitted to the volume.
    saved_tile = json.loads((run / "config.json").read_text())["tile"]
    assert saved_tile != [28, 28, 28]
    assert main(["densify", str(root / "vol.tif"), "--labels", str(root / "cells.tif"),
                 "--slices", "z=6", "--iterations", "6", "--no-augment", *TINY, "--out",
                 str(run), "--resume"]) == 0
    assert json.loads((run / "config.json").read_text())["tile"] == saved_tile


def test_densify_bad_inputs(synthetic, tmp_path, capsys):
    root, image, cells = synthetic
    vol = str(root / "vol.tif")

    def fails(*args, names):
        code = main(["densify", "--out", str(tmp_path / "bad"), "--iterations", "1", *TINY, *args])
        err = capsys.readouterr().err
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert names in err, err
        return err

    short = tmp_path / "short.tif"
    io.write_image(short, cells[:20].astype(np.uint16), axes="ZYX")
    fails(vol, "--labels", str(short), names="short.tif")  # another shape
    err = fails(vol, "--labels", str(root / "cells.tif"), "--slices", "z=24",
                names="cells.tif")  # index out of range
    assert "out of range" in err
    # Neither --unlabeled nor --slices, or an --unlabeled value no voxel holds: all annotated.
    err = fails(vol, "--labels", str(root / "cells.tif"), names="cells.tif")
    assert "every voxel counts as annotated" in err
    err = fails(vol, "--labels", str(root / "cells.tif"), "--unlabeled", "65000",
                names="cells.tif")
    assert "no voxel holds --unlabeled 65000" in err
    empty = tmp_path / "empty.tif"
    io.write_image(empty, np.full(cells.shape, 7, np.uint16), axes="ZYX")
    err = fails(vol, "--labels", str(empty), "--unlabeled", "7", names="empty.tif")
    assert "no labelled" in err
    tiny_vol, tiny_lab = tmp_path / "tiny.tif", tmp_path / "tiny_labels.tif"
    io.write_image(tiny_vol, image[:, :3], axes="CZYX")  # 3 slices: less than one tile
    io.write_image(tiny_lab, cells[:3].astype(np.uint16), axes="ZYX")
    err = fails(str(tiny_vol), "--labels", str(tiny_lab), "--depth", "2", names="tiny.tif")
    assert "smaller than one tile" in err
    fails(str(tmp_path / "missing.tif"), "--labels", str(root / "cells.tif"), names="missing.tif")
    assert not (tmp_path / "bad" / "state.safetensors").exists()


# ------------------------------------------------------------------------------ fully automated


def test_train_on_sparse_stacks_then_predict_new_stack(tmp_path):
    for name, seed in (("a", 1), ("b", 2), ("new", 3)):
        image, cells = touching_cells((16, 40, 40), rng=seed)
        io.write_image(tmp_path / f"{name}.tif", image, axes="CZYX")
        if name != "new":
            sparse = np.full(cells.shape, 9, np.uint16)  # 9: not annotated
            sparse[5], sparse[:, :, 11] = cells[5], cells[:, :, 11]
            (tmp_path / "images").mkdir(exist_ok=True)
            (tmp_path / "labels").mkdir(exist_ok=True)
            io.write_image(tmp_path / "images" / f"{name}.tif", image, axes="CZYX")
            io.write_image(tmp_path / "labels" / f"{name}.tif", sparse, axes="ZYX")
    run = tmp_path / "run"
    assert main(["train", "--images", str(tmp_path / "images"), "--labels",
                 str(tmp_path / "labels"), "--unlabeled", "9", "--boundary-width", "2",
                 "--out", str(run), "--iterations", "4", *TINY]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["label_mode"] == "boundary" and cfg["boundary_width"] == 2
    assert main(["predict", str(tmp_path / "new.tif"), "--model", str(run / "last.safetensors"),
                 "--out", str(tmp_path / "pred"), "--quiet"]) == 0
    labels, meta = io.read_labels(tmp_path / "pred" / "new_labels.tif")
    probs, _ = io.read_image(tmp_path / "pred" / "new_probs.tif")
    assert labels.shape == (16, 40, 40) and meta["axes"] == "ZYX"
    assert probs.shape == (2, 16, 40, 40) and np.array_equal(labels, probs.argmax(0))


def test_densify_init_model_with_fewer_classes_than_the_annotation(synthetic, tmp_path, capsys):
    import torch

    from useg.nets import UNet
    from useg.nets.checkpoint import save_model

    root, _, cells = synthetic
    torch.manual_seed(0)
    model = save_model(UNet("ronneberger2015", width=2, depth=1, ndim=3, classes=2),
                       tmp_path / "two.safetensors", {"labels": {"mode": "classes"}})
    classes = tmp_path / "classes.tif"
    io.write_image(classes, (cells % 5).astype(np.uint16), axes="ZYX")
    code = main(["densify", str(root / "vol.tif"), "--labels", str(classes), "--label-mode",
                 "classes", "--init", str(model), "--out", str(tmp_path / "run"), "--tile", "28",
                 "--workers", "0", "--iterations", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "classes.tif" in err and "5 classes" in err and "two.safetensors" in err
    assert "changed" not in err  # not the misleading "file changed since" reason
