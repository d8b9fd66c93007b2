"""Keeping freed host memory for reuse (useg.hostmem)."""

from __future__ import annotations

import resource

import numpy as np
import pytest
import torch

from useg import hostmem
from useg.nets import UNet
from useg.predict import _budget, predict

needs_glibc = pytest.mark.skipif(
    hostmem._glibc() is None, reason="the allocator tuning applies to glibc only"
)


def _forward_faults(times: int = 2) -> int:
    """Minor page faults of ``times`` forward passes of a 3D U-Net tile whose activations are
    larger than glibc's 32 MiB mmap threshold, after one pass to warm up."""
    net = UNet("cicek2016", width=8, depth=1, batch_stats=False).eval()
    x = torch.rand(1, 1, 100, 100, 100)
    with torch.inference_mode():
        net(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(times):
            net(x)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@needs_glibc
def test_freed_blocks_are_reused_inside_and_returned_after(monkeypatch):
    monkeypatch.delenv("USEG_KEEP_FREED_MEMORY", raising=False)
    # Two activations of 16 x 98^3 float32 per pass at least, each faulted in afresh.
    outside = _forward_faults()
    assert outside >= 2 * 2 * (16 * 98**3 * 4) // resource.getpagesize()
    with hostmem.keep_freed_memory() as tuned:
        assert tuned
        inside = _forward_faults()
    assert inside < outside / 4
    assert hostmem._depth == 0
    # Leaving restores the usual thresholds: large blocks are mapped afresh again.
    assert _forward_faults() > outside / 2


@needs_glibc
def test_nested_uses_share_one_setting():
    with hostmem.keep_freed_memory():
        outer = _forward_faults()
        with hostmem.keep_freed_memory():
            assert hostmem._depth == 2
        assert hostmem._depth == 1
        # Still tuned after the inner block has left.
        assert _forward_faults() <= max(2 * outer, 1000)
    assert hostmem._depth == 0


def test_switched_off_by_environment_or_argument(monkeypatch):
    monkeypatch.setenv("USEG_KEEP_FREED_MEMORY", "0")
    assert not hostmem.enabled()
    with hostmem.keep_freed_memory() as tuned:
        assert not tuned
    monkeypatch.delenv("USEG_KEEP_FREED_MEMORY")
    with hostmem.keep_freed_memory(active=False) as tuned:
        assert not tuned


@needs_glibc
def test_3d_cpu_budget_counts_the_heap_slack(monkeypatch):
    monkeypatch.delenv("USEG_KEEP_FREED_MEMORY", raising=False)
    tuned = _budget("cpu", None, 3)
    monkeypatch.setenv("USEG_KEEP_FREED_MEMORY", "0")
    plain = _budget("cpu", None, 3)
    assert tuned == pytest.approx(plain / hostmem.HEAP_SLACK)
    # 2D keeps the allocator's default and its budget.
    assert _budget("cpu", None, 2) == float(1 << 30)


def test_3d_prediction_is_the_same_with_and_without(monkeypatch):
    net = UNet("cicek2016", width=2, depth=2, batch_stats=False).eval()
    image = np.random.default_rng(0).random((40, 44, 36), dtype=np.float32)
    monkeypatch.setenv("USEG_KEEP_FREED_MEMORY", "0")
    plain = predict(net, image, device="cpu", tile=(60, 60, 60))
    monkeypatch.delenv("USEG_KEEP_FREED_MEMORY")
    tuned = predict(net, image, device="cpu", tile=(60, 60, 60))
    np.testing.assert_array_equal(plain, tuned)
    assert hostmem._depth == 0
