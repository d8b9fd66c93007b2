"""glibc keeping freed memory during training (:func:`useg.device.freed_memory_kept`): kept inside
the block, handed back after it and for a while inside it, left alone where the user chose."""

from __future__ import annotations

import os
import platform
import sys

import numpy as np
import pytest
import torch

from useg import device


def _clean_malloc_env(monkeypatch):
    """Neither useg's switch nor glibc's own variables set (importing dask's distributed, in
    other tests, exports MALLOC_TRIM_THRESHOLD_, which counts as the user's choice)."""
    monkeypatch.delenv("USEG_KEEP_FREED_MEMORY", raising=False)
    for name in device.MALLOC_ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's allocator only")
def test_freed_memory_is_kept_inside_the_block_and_handed_back_after(monkeypatch):
    _clean_malloc_env(monkeypatch)
    size = 256 * 2**20
    with device.freed_memory_kept() as kept:
        assert kept
        with device.freed_memory_kept() as again:  # nested: the outer block decides
            assert not again
        block = np.ones(size, dtype=np.uint8)
        held = _rss_bytes()
        del block
        assert _rss_bytes() > held - size // 2  # freed, but kept by the process
        with device.freed_memory_handed_back():
            assert _rss_bytes() < held - size // 2  # handed back for a while
        assert device._kept
    assert not device._kept
    block = np.ones(size, dtype=np.uint8)
    held = _rss_bytes()
    del block
    assert _rss_bytes() < held - size // 2  # glibc's default: large blocks go back at once


def test_freed_memory_is_not_kept_where_the_user_chose(monkeypatch):
    monkeypatch.setenv("USEG_KEEP_FREED_MEMORY", "0")
    with device.freed_memory_kept() as kept:
        assert not kept
    monkeypatch.delenv("USEG_KEEP_FREED_MEMORY")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with device.freed_memory_kept() as kept:
        assert not kept
    with device.freed_memory_kept(False) as kept:
        assert not kept


def test_freed_memory_fits_only_within_half_the_machine_on_cpu():
    cpu = torch.device("cpu")
    memory = device.device_memory(cpu)
    assert device.freed_memory_fits(memory / 8, cpu)
    assert not device.freed_memory_fits(memory / 3, cpu)
    assert not device.freed_memory_fits(1, torch.device("meta"))


def test_training_keeps_freed_memory_for_its_steps_and_hands_it_back_to_validate(
        tmp_path, monkeypatch):
    from useg.training import loop
    from useg.training.config import TrainConfig
    from useg.training.samples import make_sample
    from useg.workflows.synthetic import touching_cells

    _clean_malloc_env(monkeypatch)
    events = []
    real_kept, real_back = loop.freed_memory_kept, loop.freed_memory_handed_back
    real_evaluate = loop.evaluate_samples

    def kept(keep=True):
        events.append(("kept", keep))
        return real_kept(keep)

    def back():
        events.append(("handed back",))
        return real_back()

    def evaluate(*args, **kwargs):
        events.append(("validation", device._kept))
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "freed_memory_kept", kept)
    monkeypatch.setattr(loop, "freed_memory_handed_back", back)
    monkeypatch.setattr(loop, "evaluate_samples", evaluate)
    img, inst = touching_cells((64, 64), rng=0)
    samples = [make_sample(img, inst, mode="instances", w0=10, sigma=5)]
    cfg = TrainConfig(net={"ndim": 2, "width": 2, "depth": 1}, tile=36, iterations=4,
                      log_every=2, val_every=2, workers=0, device="cpu", augment=None, seed=1)
    notes = []
    loop.train(cfg, samples, tmp_path / "run", val_samples=samples, progress=False,
               say=notes.append)
    assert events[0] == ("kept", True)  # a tiny step fits the machine
    if device._glibc() is not None:  # the user is told, with the way out
        assert any("USEG_KEEP_FREED_MEMORY=0" in note for note in notes)
    validations = [e for e in events if e[0] == "validation"]
    assert validations and all(not inside for _, inside in validations)
    assert not device._kept  # handed back when training ends


def test_training_step_bytes_counts_every_convolution_output_four_times():
    from useg.nets import UNet
    from useg.nets.geometry import training_step_bytes

    # No pooling: 1 -> 64 -> 64 valid 3x3 convolutions, then the 64 -> 2 head.
    cfg = UNet("ronneberger2015", depth=0).config
    outputs = 64 * 98**2 + 64 * 96**2 + 2 * 96**2
    assert training_step_bytes(cfg, (100, 100), itemsize=4) == 4 * 4 * outputs
    # One level down: the up-convolution of the 3D paper network keeps its channels.
    # At a 44^3 tile: level 0 convolves to 42^3 and 40^3, pools to 20^3, level 1 convolves to
    # 18^3 and 16^3, the up-convolution gives 32^3, the expanding convolutions 30^3 and 28^3.
    deep = UNet("cicek2016", width=4, depth=1).config
    mid0, out0 = deep.level_channels(0)
    mid1, out1 = deep.level_channels(1)
    up = out1 if deep.up_keep_channels else out1 // 2
    outputs = (mid0 * 42**3 + out0 * 40**3 + mid1 * 18**3 + out1 * 16**3 + up * 32**3
               + out0 * 30**3 + out0 * 28**3 + deep.classes * 28**3)
    assert training_step_bytes(deep, (44, 44, 44), itemsize=2) == 4 * 2 * outputs


def _spy_geometry(monkeypatch):
    """Record what ``predict`` asks ``tile_geometry`` for, and whether memory is kept then."""
    import useg.inference.predict as module

    calls = []
    real = module.tile_geometry

    def spy(*args, **kwargs):
        calls.append({"freed_kept": kwargs.get("freed_kept", False), "kept": device._kept})
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "tile_geometry", spy)
    return calls


def test_3d_prediction_on_cpu_keeps_freed_memory_where_useg_chooses_the_tile(monkeypatch):
    from useg.inference import tile_choice
    from useg.inference.predict import predict
    from useg.nets import UNet

    _clean_malloc_env(monkeypatch)
    net = UNet("cicek2016", width=2, depth=1, batch_stats=False)
    volume = np.random.default_rng(0).random((40, 36, 36)).astype(np.float32)
    # A default budget small enough for several tiles, and any extra work accepted.
    default = tile_choice._budget
    monkeypatch.setattr(tile_choice, "_budget", lambda device_, given, ndim: 2.0**20
                        if given is None else default(device_, given, ndim))
    monkeypatch.setattr(tile_choice, "KEPT_WORK_LIMIT", 100.0)
    calls = _spy_geometry(monkeypatch)
    kept = predict(net, volume, device="cpu", precision="fp32")
    glibc = device._glibc() is not None
    assert calls[-1] == {"freed_kept": glibc, "kept": glibc}
    assert not device._kept  # handed back after the prediction
    # Where the caller chose the tile or the budget, or asked glibc to be left alone, nothing
    # changes; the result is the same whichever tiles were used (seamless).
    for kwargs in ({"tile": 64}, {"memory_gib": 1.0}):
        again = predict(net, volume, device="cpu", precision="fp32", **kwargs)
        assert calls[-1] == {"freed_kept": False, "kept": False}
        np.testing.assert_allclose(again, kept, atol=1e-5)
    monkeypatch.setenv("USEG_KEEP_FREED_MEMORY", "0")
    predict(net, volume, device="cpu", precision="fp32")
    assert calls[-1] == {"freed_kept": False, "kept": False}


def test_2d_prediction_and_one_pass_networks_leave_glibc_alone(monkeypatch):
    from useg.inference.predict import predict
    from useg.nets import UNet

    _clean_malloc_env(monkeypatch)
    calls = _spy_geometry(monkeypatch)
    predict(UNet("ronneberger2015", width=2, depth=1), np.zeros((40, 40), np.float32),
            device="cpu", precision="fp32")
    assert calls[-1] == {"freed_kept": False, "kept": False}
    # Batch statistics make the output depend on the tile: one pass, no next tile to reuse for.
    one_pass = UNet("cicek2016", width=2, depth=1, batch_stats=True)
    predict(one_pass, np.zeros((20, 20, 20), np.float32), device="cpu", precision="fp32")
    assert calls[-1] == {"freed_kept": False, "kept": False}


def test_tiles_for_kept_freed_memory_fit_half_the_default_budget(monkeypatch):
    from useg.inference import tile_choice
    from useg.nets import UNet
    from useg.nets.geometry import peak_bytes

    net = UNet("cicek2016", width=4, depth=2, batch_stats=False)
    shape, cpu = (96, 96, 96), torch.device("cpu")
    budget = 40 * 2**20  # small enough that a whole-volume tile does not fit
    default = tile_choice._budget
    monkeypatch.setattr(tile_choice, "_budget", lambda device_, given, ndim: float(budget)
                        if given is None else default(device_, given, ndim))
    plain = tile_choice.tile_geometry(net, shape, None, cpu, False)[0]
    halved = tile_choice.tile_geometry(net, shape, None, cpu, False, freed_kept=True)[0]
    assert peak_bytes(net.config, halved) <= budget / 2 < peak_bytes(net.config, plain)
    # A budget the caller asked for stands as asked.
    monkeypatch.undo()
    asked = tile_choice.tile_geometry(net, shape, None, cpu, False, memory_gib=0.04)
    assert asked == tile_choice.tile_geometry(net, shape, None, cpu, False, memory_gib=0.04,
                                              freed_kept=True)


def test_freed_memory_is_kept_only_where_the_smaller_tiles_cost_little_more_work(monkeypatch):
    from useg.inference import tile_choice
    from useg.nets import UNet

    monkeypatch.setattr(tile_choice, "_budget", lambda device_, given, ndim: 4.0 * 2**30
                        if given is None else float(given))
    cpu = torch.device("cpu")

    def keeps(width, shape, **kwargs):
        net = UNet("cicek2016", width=width, batch_stats=False)
        return tile_choice.keeps_freed_memory(net, shape, cpu, False, **kwargs)

    # Width 16: half the budget still holds tiles of 220^3, about a tenth more work (by the
    # tile model); width 32 would need four times the tiles.
    assert keeps(16, (256, 256, 256))
    assert not keeps(32, (256, 256, 256))
    assert not keeps(16, (40, 64, 64))  # one tile: nothing to reuse
    assert not keeps(16, (256, 256, 256), tile=220)
    assert not keeps(16, (256, 256, 256), memory_gib=4.0)
