import re

import numpy as np
import pytest
import torch

from useg.errors import ConfigError
from useg.inference.tiling import plan_tiles, predict_tiled
from useg.io.arrays import mirror_indices, read_tile
from useg.nets import UNet, UNetConfig, halo, pool_step, receptive_radius, valid_input_shape
from useg.nets.geometry import tile_context


def _net_predictor(net):
    dtype = next(net.parameters()).dtype

    def run(x):
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(x)).to(dtype)).numpy()

    return run


def _whole_image_pass(net, image, plan):
    """One forward pass over the image mirror-padded to the area the tiles cover."""
    ctx = plan.context
    padded = plan.padded_shape()
    pads = [(0, 0)] + [
        (c, p - s - c) for c, p, s in zip(ctx, padded, image.shape[1:], strict=False)
    ]
    x = np.pad(image, pads, mode="reflect")
    with torch.no_grad():
        y = net(torch.from_numpy(x[None]).to(next(net.parameters()).dtype)).numpy()[0]
    # Output index 0 is image pixel -margin (the halo is consumed by the valid convolutions).
    return y[
        (slice(None),)
        + tuple(slice(m, m + s) for m, s in zip(plan.margin, image.shape[1:], strict=False))
    ]


@pytest.mark.parametrize(
    "cfg, shape, tile",
    [
        (UNetConfig(ndim=2, width=4, depth=2, classes=3), (1, 157, 203), 68),
        (UNetConfig(ndim=2, width=4, depth=3, in_channels=2), (2, 61, 300), (124, 156)),
        (UNetConfig(ndim=2, width=4, depth=2), (1, 20, 33), 60),  # image smaller than a tile
        (
            UNetConfig(ndim=3, width=2, depth=2, classes=2, pool=((1, 2, 2), (2, 2, 2))),
            (1, 23, 45, 38),
            (36, 44, 52),
        ),
        (UNetConfig(ndim=1, width=4, depth=3), (1, 301), 100),
    ],
)
def test_valid_tiling_is_seamless(cfg, shape, tile, rng):
    torch.manual_seed(0)
    # Double precision, so that float32 summation order cannot hide or fake a seam.
    net = UNet(cfg).eval().double()
    image = rng.standard_normal(shape).astype(np.float32)
    tile = valid_input_shape(cfg, tile)
    plan = plan_tiles(shape[1:], tile, halo(cfg), 0, pool_step(cfg))
    tiled = predict_tiled(
        _net_predictor(net),
        image,
        tile=tile,
        out_channels=cfg.classes,
        halo=halo(cfg),
        step=pool_step(cfg),
        batch_size=2,
        dtype=np.float64,
    )
    whole = _whole_image_pass(net, image, plan)
    assert tiled.shape == (cfg.classes, *shape[1:])
    np.testing.assert_allclose(tiled, whole, atol=1e-10, rtol=0)
    if len(plan) > 1 and any(k % s for k, s in zip(plan.kept, pool_step(cfg), strict=False)):
        # Stepping by the kept size breaks the pooling-grid alignment here, and the tiles then
        # disagree with the whole-image pass: the oracle can fail.
        misaligned = predict_tiled(
            _net_predictor(net),
            image,
            tile=tile,
            out_channels=cfg.classes,
            halo=halo(cfg),
            step=1,
            dtype=np.float64,
        )
        assert np.abs(misaligned - whole).max() > 1e-4


def test_index_revealing_predictor_places_every_pixel():
    # Channels hold each pixel's own coordinates; a predictor that returns the centre of its
    # input (halo h) must give back the coordinates of the pixel it is written to.
    shape = (67, 129)
    yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    image = np.stack([yy, xx])
    h = 7

    def centre(x):
        return x[:, :, h:-h, h:-h]

    out = predict_tiled(centre, image, tile=(30, 44), out_channels=2, halo=h, step=4, batch_size=3)
    np.testing.assert_array_equal(out, image)

    # The leftmost context pixel of each output position is the mirror-padded image's pixel.
    def corner(x):
        return x[:, :, : x.shape[2] - 2 * h, : x.shape[3] - 2 * h]

    out = predict_tiled(corner, image, tile=(30, 44), out_channels=2, halo=h, step=4)
    expected = np.pad(image, [(0, 0), (h, h), (h, h)], mode="reflect")[:, : shape[0], : shape[1]]
    np.testing.assert_array_equal(out, expected)


def test_same_padding_policy_deviation_is_small_and_measured(rng):
    torch.manual_seed(0)
    cfg = UNetConfig(ndim=2, width=8, depth=3, padding="same", classes=2)
    net = UNet(cfg).eval()
    image = rng.standard_normal((1, 300, 300)).astype(np.float32)
    radius = receptive_radius(cfg)[0]
    assert radius == 51
    deviation = {}
    for margin in (0, 16, 32, 56):
        out = predict_tiled(
            _net_predictor(net), image, tile=160, out_channels=2, margin=margin, step=8
        )
        # The reference mirrors the same context at the image border as the tiles do.
        whole = _whole_image_pass(net, image, plan_tiles((300, 300), 160, 0, margin, 8))
        deviation[margin] = float(np.abs(out - whole).max() / np.abs(whole).max())
    print("same-padding max relative deviation from whole-image pass, by margin:", deviation)
    assert deviation[32] < deviation[16] < deviation[0]
    # A margin of at least the receptive radius (51, rounded to the pooling grid) is exact.
    assert deviation[56] < 1e-5 < deviation[32]


def test_disk_backed_output_and_progress(tmp_path, rng):
    image = rng.standard_normal((1, 70, 90)).astype(np.float32)
    out = np.lib.format.open_memmap(
        tmp_path / "o.npy", mode="w+", dtype=np.float32, shape=(1, 70, 90)
    )
    calls = []
    predict_tiled(
        lambda x: x[:, :, 3:-3, 3:-3],
        image,
        tile=26,
        halo=3,
        out_channels=1,
        out=out,
        progress=lambda done, total: calls.append((done, total)),
    )
    out.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), image)
    assert calls[-1][0] == calls[-1][1] == len(calls)


def test_mirror_and_read_tile():
    assert mirror_indices(-2, 9, 3).tolist() == [2, 1, 0, 1, 2, 1, 0, 1, 2]
    assert mirror_indices(0, 3, 1).tolist() == [0, 0, 0]
    img = np.arange(5 * 6, dtype=np.float32).reshape(1, 5, 6)
    t = read_tile(img, (-3, 2), (11, 3))
    np.testing.assert_array_equal(
        t, np.pad(img, [(0, 0), (3, 3), (0, 0)], mode="reflect")[:, :, 2:5]
    )


def test_plan_errors():
    with pytest.raises(ConfigError):
        plan_tiles((100, 100), tile=10, halo=5)
    with pytest.raises(ConfigError):
        plan_tiles((0, 100), tile=50, halo=5)
    with pytest.raises(ConfigError, match="returned tiles of shape"):
        predict_tiled(lambda x: x, np.zeros((1, 30, 30)), tile=20, halo=2, out_channels=1)


# ------------------------------------------------------------- batch norm: the 3D U-Net preset

# Odd sizes, so that every tile plan mirrors context at the far borders too.
VOLUME = (1, 13, 17, 21)
UNCHANGED = {"offset": [0.0], "scale": [1.0]}  # predict sees the image as it is


def _after_training_passes(net, passes=3):
    """The network in eval mode after a few training-mode passes over inputs of mean 2 and
    std 3, so that batch norm's running statistics are far from their initial 0 and 1."""
    generator = torch.Generator().manual_seed(0)
    net.train()
    with torch.no_grad():
        for _ in range(passes):
            x = 2.0 + 3.0 * torch.randn((2, 1, 92, 92, 92), generator=generator)
            net(x)
    return net.eval()


def _one_pass_probabilities(net, image):
    """Softmax of one forward pass over the image mirror-padded for a single covering tile."""
    from useg.inference.tile_choice import whole_image_tile

    cfg = net.config
    plan = plan_tiles(image.shape[1:], whole_image_tile(net, image.shape[1:]), halo(cfg), 0,
                      pool_step(cfg))
    assert len(plan) == 1
    return torch.softmax(torch.from_numpy(_whole_image_pass(net, image, plan)), 0).numpy()


@pytest.fixture(scope="module")
def cicek2016():
    torch.manual_seed(0)
    return _after_training_passes(UNet("cicek2016", width=2, in_channels=1, classes=3))


@pytest.mark.parametrize("tile, counts", [((100, 108, 116), (2, 1, 1)),
                                          ((108, 100, 108), (1, 2, 2))])
def test_cicek2016_preset_is_seamless(cicek2016, tile, counts, rng):
    from useg.inference.predict import predict

    net = cicek2016
    means = [m.running_mean for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert means and max(float(m.abs().max()) for m in means) > 0.5  # not the initial zeros
    image = rng.standard_normal(VOLUME).astype(np.float32)
    assert plan_tiles(VOLUME[1:], tile, halo(net.config), 0, pool_step(net.config)).counts \
        == counts
    # fp32: on a CPU with bf16 instructions auto would take bf16, whose rounding is not the
    # subject here (the reference pass is fp32).
    tiled = predict(net, image, tile=tile, device="cpu", stats=UNCHANGED, batch_size=2,
                    precision="fp32")
    whole = _one_pass_probabilities(net, image)
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


def test_batch_statistics_predict_in_one_pass_or_refuse(tmp_path, rng, capsys):
    from useg.cli import main
    from useg.inference.predict import predict
    from useg.io import write_image
    from useg.nets.checkpoint import load_model, save_model

    torch.manual_seed(0)
    net = UNet("cicek2016", width=2, depth=2, in_channels=1, classes=2, batch_stats=True)
    path = save_model(net, tmp_path / "batch-stats.safetensors")
    model = load_model(path)
    image = rng.standard_normal(VOLUME).astype(np.float32)
    whole = _one_pass_probabilities(model, image)
    # Each tile normalised by its own statistics: tiles would not give the whole-image result.
    cfg = model.config
    tiled = predict_tiled(_net_predictor(model), image, tile=60, out_channels=2,
                          halo=halo(cfg), step=pool_step(cfg))
    assert np.abs(torch.softmax(torch.from_numpy(tiled), 0).numpy() - whole).max() > 1e-2
    # So predict refuses tiles, and predicts in one pass over the whole image without one.
    with pytest.raises(ConfigError, match=f"model {path} .*depends on the tile.*running-stats"):
        predict(model, image, tile=60, device="cpu", stats=UNCHANGED)
    one_pass = predict(model, image, device="cpu", stats=UNCHANGED, precision="fp32")
    # Rounding only: predict runs channels-last, the reference pass contiguous, and oneDNN sums
    # in another order for each; batch statistics of a width-2 network magnify the difference.
    np.testing.assert_allclose(one_pass, whole, atol=1e-4, rtol=0)
    # The memory budget does not choose a tile for it (here, one of 44^3 would fit).
    from useg.inference.tile_choice import default_tile, whole_image_tile

    assert default_tile(model, VOLUME[1:], budget_bytes=1 << 20) == whole_image_tile(
        model, VOLUME[1:])
    # useg predict: one line, exit code 2.
    write_image(tmp_path / "v.tif", image, axes="CZYX")
    assert main(["predict", str(tmp_path / "v.tif"), "--model", str(path), "--out",
                 str(tmp_path / "out"), "--tile", "60", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "depends on the tile" in err and str(path) in err


def test_a_requested_tile_of_a_same_network_grows_to_stitch_exactly_and_costly_is_named(
        tmp_path, capsys):
    # A same-padding network discards its context at every tile edge. A tile too small for
    # that used to be honoured, and its tiles' edges differed from one whole-image pass; now it
    # grows, with one line. A tile that keeps little of its output is named too (exact, slow).
    import warnings

    from useg.cli import main
    from useg.errors import UsegWarning
    from useg.inference.predict import predict
    from useg.io import write_image
    from useg.nets.checkpoint import save_model

    torch.manual_seed(0)
    model = UNet("cicek2016", width=2, depth=2, padding="same", in_channels=1, classes=2)
    assert tile_context(model.config) == (24, 24, 24)
    image = np.random.default_rng(0).normal(size=(1, 8, 16, 16)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UsegWarning)
        whole = predict(model, image, device="cpu")  # the default tile: no note
        predict(model, image, tile=64, device="cpu")  # one exact pass: none either
    with pytest.warns(UsegWarning) as record:
        small = predict(model, image, tile=16, device="cpu")
    notes = [str(w.message) for w in record if issubclass(w.category, UsegWarning)]
    assert len(notes) == 1
    assert re.fullmatch(r"a tile of \(16, 16, 16\) is too small .* \(\(24, 24, 24\) voxels per "
                        r"side\), so tiles of \(52, 52, 52\) are used .*; they keep only "
                        r"\(4, 4, 4\) of their output .* about \d+ times the work of the "
                        r"default tile; give a larger tile, or none", notes[0]), notes[0]
    np.testing.assert_allclose(small, whole, atol=1e-5)
    with pytest.warns(UsegWarning, match=r"^a tile of \(52, 52, 52\) keeps only \(4, 4, 4\) "):
        exact = predict(model, image, tile=52, device="cpu")  # exact, but 32 passes
    np.testing.assert_allclose(exact, whole, atol=1e-5)
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    write_image(tmp_path / "v.tif", image, axes="CZYX")
    assert main(["predict", str(tmp_path / "v.tif"), "--model", str(path), "--out",
                 str(tmp_path / "out"), "--tile", "16", "--quiet"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "too small" in err[0] and "times the work" in err[0]
    # A 2D network over a stack predicts slice by slice: one line for the stack, not per slice.
    flat = UNet("ronneberger2015", width=2, depth=2, padding="same", in_channels=1, classes=2)
    save_model(flat, tmp_path / "flat.safetensors")
    write_image(tmp_path / "stack.tif", image[:, :4], axes="CZYX")
    assert main(["predict", str(tmp_path / "stack.tif"), "--model",
                 str(tmp_path / "flat.safetensors"), "--out", str(tmp_path / "out2"), "--tile",
                 "8", "--quiet"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "too small" in err[0], err
