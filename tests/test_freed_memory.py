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


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's allocator only")
def test_freed_memory_is_kept_inside_the_block_and_handed_back_after(monkeypatch):
    monkeypatch.delenv("USEG_KEEP_FREED_MEMORY", raising=False)
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
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

    # Importing dask's distributed (other tests) exports MALLOC_TRIM_THRESHOLD_, which counts
    # as the user's choice.
    monkeypatch.delenv("USEG_KEEP_FREED_MEMORY", raising=False)
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
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
