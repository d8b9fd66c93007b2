"""Transparent huge pages for PyTorch's large CPU buffers: asked for by ``import useg`` unless
the user said otherwise, and reported truthfully by :func:`useg.device.huge_pages_in_effect`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

KERNEL_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def kernel_grants_on_advice() -> bool:
    """The kernel's setting selects ``always`` or ``madvise`` (shown in brackets)."""
    try:
        text = KERNEL_SETTING.read_text()
    except OSError:
        return False
    return "[always]" in text or "[madvise]" in text


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


def test_a_user_who_turned_them_off_is_obeyed():
    assert in_child(PROBE, THP_MEM_ALLOC_ENABLE="0") == "0 False"


def test_a_process_that_allocated_before_useg_is_reported_without_them():
    # PyTorch fixed its choice at its first allocation, before useg could ask.
    script = "import torch; torch.zeros(4); " + PROBE
    assert in_child(script) == "1 False"
