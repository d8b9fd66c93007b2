"""Multi-process training with torchrun (gloo on CPU) equals one process with the global batch."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from useg.checkpoint import load_model
from useg.cli import main
from useg.nets import UNet
from useg.synthetic import make_dataset


@pytest.mark.timeout(300)
def test_two_processes_equal_one_with_double_batch(tmp_path):
    make_dataset(tmp_path / "d", n_images=2, shape=(64, 64), seed=5)
    common = ["--images", str(tmp_path / "d/images"), "--labels", str(tmp_path / "d/labels"),
              "--width", "2", "--depth", "1", "--tile", "36", "--dropout", "0",
              "--iterations", "6", "--checkpoint-every", "3", "--log-every", "1",
              "--workers", "0", "--seed", "11", "--quiet", "--device", "cpu"]
    assert main(["train", *common, "--batch-size", "2", "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "useg", "train", *common, "--batch-size", "1", "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    one = load_file(tmp_path / "one/last.safetensors")
    two = load_file(tmp_path / "two/last.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=1e-5)
    # The weights moved: the comparison is not between two untouched initialisations.
    torch.manual_seed(11)
    initial = UNet(load_model(tmp_path / "one/last.safetensors").config).state_dict()
    assert max(float((one[k] - initial[k]).abs().max()) for k in one) > 1e-3
    log = (tmp_path / "two/log.csv").read_text().splitlines()
    assert len(log) == 7  # header + one row per step, written by rank 0 only

    # Resume works in the multi-process run too.
    cmd_resume = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  "--nproc_per_node", "2", "-m", "useg", "train", "--resume", "--out",
                  str(tmp_path / "two"), "--quiet"]
    done = subprocess.run(cmd_resume, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
