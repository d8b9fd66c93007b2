import numpy as np
import pytest
import torch

import useg.data
from useg.data import (
    IGNORE,
    TileStream,
    boundary_target,
    make_sample,
    sparsify,
    targets_from_labels,
)
from useg.errors import InputError
from useg.tiling import mirror_indices, read_tile


def test_binary_mode_isbi_convention():
    labels = np.array([[255, 255, 0, 255], [255, 255, 0, 255]], dtype=np.uint8)
    target, inst = targets_from_labels(labels, "binary")
    assert target.tolist() == [[1, 1, 0, 1], [1, 1, 0, 1]]
    assert len(np.unique(inst[inst > 0])) == 2  # the membrane separates two objects


def test_instances_mode_separates_touching_objects():
    inst = np.zeros((5, 8), int)
    inst[1:4, 1:4] = 1
    inst[1:4, 4:7] = 2  # touches object 1
    target, _ = targets_from_labels(inst, "instances")
    assert target[2, 3] == 0 and target[2, 4] == 0  # contact pixels became background
    assert target[2, 2] == 1 and target[2, 5] == 1
    assert target[1, 1] == 1  # an outer rim next to background stays foreground


def test_boundary_target_and_unlabeled():
    inst = np.array([[1, 1, 2, 2, 0, 0]])
    assert boundary_target(inst).tolist() == [[0, 1, 1, 1, 1, 0]]
    assert boundary_target(inst, ignore=0).tolist() == [[0, 1, 1, 0, IGNORE, IGNORE]]
    assert boundary_target(np.array([[1, 1, 1, 2, 2, 2]]), width=2).tolist() == [[0, 1, 1, 1, 1, 0]]


def test_classes_mode_with_unlabeled_value():
    labels = np.array([[0, 1, 2, 9]])
    target, _ = targets_from_labels(labels, "classes", unlabeled=9)
    assert target.tolist() == [[0, 1, 2, IGNORE]]


def test_sparsify_keeps_only_annotated_slices():
    t = np.zeros((4, 5, 6), dtype=np.int64)
    s = sparsify(t, {0: [1, 3], 1: [0]})
    kept = s != IGNORE
    assert kept[1].all() and kept[3].all() and kept[:, 0].all()
    assert int(kept.sum()) == 2 * 30 + 2 * 6
    with pytest.raises(InputError, match="out of range"):
        sparsify(t, {2: [6]})


def test_make_sample_weights_and_errors(rng):
    img = rng.random((1, 32, 32)).astype(np.float32)
    lab = np.zeros((32, 32), np.uint8)
    lab[2:15, 2:15] = 255
    lab[2:15, 16:30] = 255
    s = make_sample(img, lab, mode="binary")
    assert s.weight.shape == (32, 32) and s.weight.min() > 0
    assert s.weight[8, 15] > s.weight[30, 30]  # the gap between touching objects weighs more
    with pytest.raises(InputError, match="differ"):
        make_sample(img, lab[:-1], mode="binary")
    with pytest.raises(InputError, match="no labelled pixel"):
        make_sample(img, np.full((32, 32), 7), mode="classes", unlabeled=7)
    sparse = make_sample(img, lab, mode="binary", slices={0: [5]})
    assert (sparse.weight[6] == 0).all() and (sparse.weight[5] > 0).all()


@pytest.mark.parametrize("shape, tin, tout", [((40, 50), (30, 30), (10, 10)),
                                               ((12, 20, 22), (10, 12, 12), (2, 4, 4))])
def test_tile_stream_is_deterministic_and_shaped(shape, tin, tout, rng):
    img = rng.random((1, *shape)).astype(np.float32)
    lab = (rng.random(shape) > 0.5).astype(np.uint8)
    s = make_sample(img, lab, mode="classes")
    stream = TileStream([s], tin, tout, augment=None, seed=3)
    x, y, w = stream.item(5)
    assert x.shape == (1, *tin) and y.shape == tout and w.shape == tout
    x2, y2, w2 = TileStream([s], tin, tout, augment=None, seed=3, start=5).item(5)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    first = next(iter(TileStream([s], tin, tout, augment=None, seed=3, start=5)))
    assert np.array_equal(first[0], x)
    # Without augmentation the target is the centre of the input tile, cut from the same place.
    assert not np.array_equal(stream.item(6)[0], x)


@pytest.mark.parametrize("start, shape", [((3, 4), (6, 5)), ((-7, 9), (30, 8)),
                                          ((-25, -3), (60, 41)), ((0, 0), (10, 12)),
                                          ((2, -1, 5), (4, 14, 3))])
def test_training_window_read_tile_equals_one_mirrored_gather(start, shape, rng):
    # read_tile gathers axis by axis (the training hot path); the reference gathers all at once.
    image = rng.random((2, *(10, 12, 7)[: len(start)])).astype(np.float32)
    got = read_tile(image, start, shape)
    assert got.shape == (2, *shape)
    idx = [mirror_indices(s, n, size)
           for s, n, size in zip(start, shape, image.shape[1:], strict=True)]
    assert np.array_equal(got, image[np.ix_(range(2), *idx)])


def _stream(rng, augment=None):
    img = rng.random((1, 30, 34)).astype(np.float32)
    lab = (rng.random((30, 34)) > 0.5).astype(np.uint8)
    return TileStream([make_sample(img, lab, w0=5, sigma=2)], (20, 20), (6, 6), augment=augment,
                      seed=2)


def test_collate_and_unpack_round_trip(rng):
    stream = _stream(rng)
    items = [stream.item(k) for k in range(3)]
    packed = stream.collate(items)
    assert isinstance(packed, np.ndarray) and packed.dtype == np.uint8
    x, y, w = stream.unpack(packed, 3)
    assert (x.dtype, y.dtype, w.dtype) == (torch.float32, torch.int64, torch.float32)
    for j, (xi, yi, wi) in enumerate(items):
        assert np.array_equal(x[j].numpy(), xi)
        assert np.array_equal(y[j].numpy(), yi) and np.array_equal(w[j].numpy(), wi)
    with pytest.raises(InputError, match="does not hold 2 tile"):
        stream.unpack(packed, 2)


@pytest.mark.parametrize("shared", [False, True])
def test_loader_worker_batches_are_the_items(shared, rng, monkeypatch):
    # Small batches come from the worker as pickled arrays, large ones in shared memory; both
    # must carry the items bit for bit (a zero threshold forces shared memory here).
    if shared:
        monkeypatch.setattr(useg.data, "_SHARED_BATCH_BYTES", 0)
    stream = _stream(rng, augment={"elastic": True})
    loader = torch.utils.data.DataLoader(stream, batch_size=2, num_workers=1,
                                         collate_fn=stream.collate,
                                         multiprocessing_context="fork")
    it = iter(loader)
    for step in range(2):
        packed = next(it)
        assert isinstance(packed, torch.Tensor) == shared
        x, y, w = stream.unpack(packed, 2)
        for j in range(2):
            xi, yi, wi = stream.item(2 * step + j)
            assert np.array_equal(x[j].numpy(), xi)
            assert np.array_equal(y[j].numpy(), yi) and np.array_equal(w[j].numpy(), wi)
