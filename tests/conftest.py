import os

import pytest
import torch

from useg.workflows.synthetic import make_dataset

# Two cores are shared by the whole suite; more threads only add contention.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)


#: The smallest network and tile `useg train` accepts quickly, for command-line tests.
TINY = ["--width", "2", "--depth", "1", "--tile", "36", "--workers", "0", "--seed", "3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Synthetic touching cells: two training images and one validation image (64x64)."""
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root / "train", n_images=2, shape=(64, 64), seed=1)
    make_dataset(root / "val", n_images=1, shape=(64, 64), seed=2)
    return root
