"""Multi-process training with torchrun (gloo on CPU) equals one process with the global batch."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from useg.cli import main
from useg.nets import UNet
from useg.nets.checkpoint import load_model
from useg.workflows.synthetic import make_dataset


@pytest.mark.timeout(300)
def test_two_processes_equal_one_with_double_batch(tmp_path):
    make_dataset(tmp_path / "d", n_images=2, shape=(64, 64), seed=5)
    common = ["--images", str(tmp_path / "d/images"), "--labels", str(tmp_path / "d/labels"),
              "--width", "2", "--depth", "1", "--tile", "36", "--dropout", "0",
              "--iterations", "6", "--checkpoint-every", "3", "--log-every", "1",
              "--workers", "0", "--seed", "11", "--quiet", "--device", "cpu",
              "--precision", "fp32"]  # bf16's rounding (auto, on some CPUs) is not the subject
    assert main(["train", *common, "--batch-size", "2", "--out", str(tmp_path / "one")]) == 0
    # The two-process run is stopped part-way and resumed, which the comparison covers too:
    # rank 0 dies right after its first checkpoint (step 3 of 6), and resuming must run steps
    # 4 to 6 from there. (One pair of torchrun launches keeps the test short on two cores.)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    script = tmp_path / "stop_after_first_checkpoint.py"
    script.write_text(_STOP_AFTER_FIRST_CHECKPOINT)
    two = tmp_path / "two"
    cmd = [*torchrun, str(script), "train", *common, "--batch-size", "1", "--out", str(two)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0, done.stderr[-2000:]
    assert _step(two) == 3 and _logged_steps(two) == [1, 2, 3]  # stopped part-way
    # Before the stop, each step's loss is that of one process with the double batch.
    assert _losses(two) == pytest.approx(_losses(tmp_path / "one")[:3], rel=1e-5)
    cmd = [*torchrun, "-m", "useg", "train", "--resume", "--out", str(two), "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    # The remaining steps ran after resuming, logged once each by rank 0 only...
    assert _step(two) == 6 and _logged_steps(two) == [1, 2, 3, 4, 5, 6]
    assert _losses(two) == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)
    # ...and end with the weights of the uninterrupted single-process run.
    one = load_file(tmp_path / "one/last.safetensors")
    resumed = load_file(two / "last.safetensors")
    assert one.keys() == resumed.keys()
    for key in one:
        torch.testing.assert_close(resumed[key], one[key], atol=1e-6, rtol=1e-5)
    # The weights moved: the comparison is not between two untouched initialisations.
    torch.manual_seed(11)
    initial = UNet(load_model(tmp_path / "one/last.safetensors").config).state_dict()
    assert max(float((one[k] - initial[k]).abs().max()) for k in one) > 1e-3


_STOP_AFTER_FIRST_CHECKPOINT = """
import sys

import useg.training.run_folder
from useg.cli import main

real = useg.training.run_folder.save_state


def stop(*args, **kwargs):  # the last thing rank 0 does for a checkpoint
    real(*args, **kwargs)
    raise SystemExit(3)


useg.training.run_folder.save_state = stop
sys.exit(main(sys.argv[1:]))
"""


def _step(run):
    with safe_open(str(run / "state.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["useg_state"])["info"]["step"]


def _logged_steps(run):
    with open(run / "log.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _losses(run):
    with open(run / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


_REDUCE_SCRIPT = """
import torch
import torch.distributed as dist
from useg.training.distributed import Dist as _Dist
from useg.training.distributed import all_reduce_sum as _all_reduce_sum

dist.init_process_group("gloo")
d = _Dist(dist.get_rank(), dist.get_world_size())
held = 0
for i in range(200):
    total = _all_reduce_sum(torch.full((4,), float(i + d.rank)), d)
    assert float(total[0]) == 2 * i + 1, total
    held += total._use_count() > 1
dist.destroy_process_group()
print(f"rank {d.rank} held {held}", flush=True)
"""


@pytest.mark.timeout(120)
def test_reduced_tensors_are_released_before_returning(tmp_path):
    # Otherwise a worker thread may still need the GIL while the interpreter exits, and the
    # process aborts (seen as a rare SIGABRT of one rank at the end of training).
    script = tmp_path / "reduce.py"
    script.write_text(_REDUCE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
    # Per rank, the reduced tensors that gloo's worker still referenced when the call returned.
    held = sorted(re.findall(r"rank (\d) held (\d+)", done.stdout))
    assert held == [("0", "0"), ("1", "0")], done.stdout
