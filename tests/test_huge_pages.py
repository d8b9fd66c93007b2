"""Transparent huge pages for PyTorch's large CPU buffers: asked for by ``import useg`` unless
the user said otherwise, and reported truthfully by :func:`useg.device.huge_pages_in_effect`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

KERNEL_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def kernel_mode() -> str:
    from useg.device import kernel_huge_page_mode

    return kernel_huge_page_mode() or ""


# With "always" the kernel backs every large mapping with huge pages, advised or not.
only_on_advice = pytest.mark.skipif(kernel_mode() != "madvise",
                                    reason=f"{KERNEL_SETTING} is not madvise")


def kernel_grants_on_advice() -> bool:
    return kernel_mode() in ("always", "madvise")


def in_child(script: str, **env: str) -> str:
    """Run ``script`` in a fresh interpreter (PyTorch reads its setting once per process)."""
    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=environ, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


PROBE = ("import useg, os; from useg.device import huge_pages_in_effect; "
         "print(os.environ.get('THP_MEM_ALLOC_ENABLE'), huge_pages_in_effect())")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@pytest.mark.skipif(not kernel_grants_on_advice(), reason=f"{KERNEL_SETTING} grants none")
def test_import_useg_gives_large_buffers_huge_pages():
    assert in_child(PROBE) == "1 True"


@only_on_advice
def test_a_user_who_turned_them_off_is_obeyed():
    assert in_child(PROBE, THP_MEM_ALLOC_ENABLE="0") == "0 False"


@only_on_advice
def test_a_process_that_allocated_before_useg_is_reported_without_them():
    # PyTorch fixed its choice at its first allocation, before useg could ask.
    script = "import torch; torch.zeros(4); " + PROBE
    assert in_child(script) == "1 False"
