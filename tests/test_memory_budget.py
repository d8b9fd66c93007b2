"""A memory budget chooses the tile (predict(memory_gib=...), useg predict --memory): larger
budgets give larger tiles and the same result; a budget that cannot be kept is refused in one
line, never silently exceeded or ignored."""

import io
import math
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import tifffile
import torch

from useg.cli import main
from useg.errors import ConfigError
from useg.inference.predict import predict
from useg.inference.tile_choice import tile_geometry
from useg.nets import UNet
from useg.nets.checkpoint import save_model
from useg.nets.geometry import peak_bytes

CPU = torch.device("cpu")
SHAPE = (300, 300)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return UNet("ronneberger2015", width=4, depth=2).eval()


@pytest.fixture
def image():
    return np.random.default_rng(0).random(SHAPE).astype(np.float32)


def _tile(net, gib, batch_size=1):
    return tile_geometry(net, SHAPE, None, CPU, False, memory_gib=gib, batch_size=batch_size)[0]


def test_larger_budgets_give_larger_tiles_within_the_budget(net):
    tiles = [_tile(net, gib) for gib in (2**-12, 2**-10, 2**-8)]
    sizes = [math.prod(t) for t in tiles]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3, tiles
    for gib, tile in zip((2**-12, 2**-10, 2**-8), tiles, strict=True):
        assert peak_bytes(net.config, tile, 4) <= gib * 2**30


def test_the_budget_is_shared_by_the_tiles_of_a_batch(net):
    # Four tiles at a time get the tile one would get from a quarter of the budget.
    assert _tile(net, 2**-8, batch_size=4) == _tile(net, 2**-10)
    tile = _tile(net, 2**-8, batch_size=4)
    assert 4 * peak_bytes(net.config, tile, 4) <= 2**-8 * 2**30 < 4 * peak_bytes(
        net.config, _tile(net, 2**-8), 4)


def test_every_budget_gives_the_same_probabilities(net, image):
    small = predict(net, image, memory_gib=2**-12, device="cpu")
    large = predict(net, image, memory_gib=2**-6, device="cpu")
    default = predict(net, image, device="cpu")
    np.testing.assert_allclose(small, default, atol=1e-5, rtol=0)
    np.testing.assert_allclose(large, default, atol=1e-5, rtol=0)


@pytest.mark.parametrize("gib", [0, -1.0, math.nan, math.inf, "4", True])
def test_a_budget_that_is_not_a_positive_number_is_refused(net, image, gib):
    with pytest.raises(ConfigError, match="--memory.*positive number of GiB"):
        predict(net, image, memory_gib=gib, device="cpu")


def test_a_budget_beside_a_tile_is_refused(net, image):
    with pytest.raises(ConfigError, match=r"--tile or --memory\), not both"):
        predict(net, image, tile=140, memory_gib=1, device="cpu")


def test_a_budget_beyond_the_machine_or_below_the_smallest_tile_is_refused(net, image):
    with pytest.raises(ConfigError, match=r"--memory 1e\+06 GiB: more than the .* GiB of cpu"):
        predict(net, image, memory_gib=1e6, device="cpu")
    smallest = peak_bytes(net.config, (44, 44), 4) / 2**30
    with pytest.raises(ConfigError, match=r"too little: the smallest tile this network can use "
                                          r"here, \(44, 44\), needs about"):
        predict(net, image, memory_gib=smallest / 2, device="cpu")
    # With a batch, the batch is named.
    with pytest.raises(ConfigError, match=r"needs about .* GiB \(3 at a time: --batch-size\)"):
        predict(net, image, memory_gib=smallest * 2, batch_size=3, device="cpu")


def test_a_one_pass_model_keeps_to_the_budget_or_refuses():
    net = UNet("cicek2016", width=2, depth=2, batch_stats=True).eval()
    volume = np.zeros((24, 40, 40), np.float32)
    tile = tile_geometry(net, volume.shape, None, CPU, False)[0]
    need = peak_bytes(net.config, tile, 4) / 2**30
    assert tile_geometry(net, volume.shape, None, CPU, False, memory_gib=need * 1.01)[0] == tile
    with pytest.raises(ConfigError, match=r"too little: this model predicts in one pass over "
                                          r"the whole image \(batch norm with the statistics "
                                          r"of the batch\)"):
        predict(net, volume, memory_gib=need / 2, device="cpu")


def run_cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue().strip()


def test_cli_memory(tmp_path, net, image):
    model = save_model(net, tmp_path / "m.safetensors")
    tifffile.imwrite(tmp_path / "a.tif", image)
    base = ["predict", tmp_path / "a.tif", "--model", model, "--quiet"]
    assert run_cli([*base, "--out", tmp_path / "default"])[0] == 0
    assert run_cli([*base, "--out", tmp_path / "small", "--memory", 2**-12])[0] == 0
    np.testing.assert_allclose(tifffile.imread(tmp_path / "small/a_probs.tif"),
                               tifffile.imread(tmp_path / "default/a_probs.tif"), atol=1e-5)
    for extra, words in [(["--memory", "1", "--tile", "140"], "not both"),
                         (["--memory", "1e-9"], "too little"),
                         (["--memory", "1e9"], "more than the"),
                         (["--memory", "-2"], "--memory"),
                         (["--memory", "lots"], "--memory")]:
        out = tmp_path / "refused"
        code, err = run_cli([*base, "--out", out, *extra])
        assert code == 2 and len(err.splitlines()) == 1 and words in err, (extra, err)
        assert not (out / "a_probs.tif").exists()


def test_dask_keeps_to_the_budget(tmp_path, net, image):
    pytest.importorskip("zarr")
    pytest.importorskip("dask")
    from useg.inference.dask import predict_dask
    from useg.io.chunked import open_array

    out = str(tmp_path / "out.zarr/probs")
    r = predict_dask(net, image[None], out, memory_gib=2**-12, progress=False)
    assert tuple(r["tile"]) == _tile(net, 2**-12)
    np.testing.assert_allclose(open_array(out)[0][:], predict(net, image, device="cpu"),
                               atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="not both"):
        predict_dask(net, image[None], str(tmp_path / "other.zarr/probs"), tile=140,
                     memory_gib=1, progress=False)
    assert not (tmp_path / "other.zarr").exists()


def test_a_batch_of_given_tiles_beyond_the_memory_is_refused(net, image, monkeypatch):
    # A given tile is checked against the device's memory for the whole batch, not one tile.
    import useg.inference.tile_choice as tile_choice

    need = peak_bytes(net.config, (140, 140), 4)
    monkeypatch.setattr(tile_choice, "device_memory", lambda device: need * 2.5)
    predict(net, image, tile=140, batch_size=2, device="cpu")
    with pytest.raises(ConfigError, match=r"a tile of \(140, 140\) needs about .* GiB for one "
                                          r"forward pass of 3 tiles, more than"):
        predict(net, image, tile=140, batch_size=3, device="cpu")


@pytest.mark.parametrize("shape", [(60, 300), (2000, 300)])
def test_the_square_tile_of_test_time_augmentation_keeps_to_the_budget(net, shape):
    # TTA turns tiles a quarter turn, so its tile is square in (Y, X): larger than the tile the
    # budget chose for an elongated image, unless the choice allows for it.
    for gib in (2**-10, 2**-8):
        tile = tile_geometry(net, shape, None, CPU, True, memory_gib=gib)[0]
        assert tile[0] == tile[1] and peak_bytes(net.config, tile, 4) <= gib * 2**30, tile
