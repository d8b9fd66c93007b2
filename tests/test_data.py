import itertools

import numpy as np
import pytest
import torch

import useg.training.stream
from useg.errors import InputError
from useg.io.arrays import mirror_indices, read_tile
from useg.labels import IGNORE
from useg.training import samples
from useg.training.samples import boundary_target, make_sample, sparsify, targets_from_labels
from useg.training.stream import TileStream
from useg.training.weights import class_balance_weights


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
    x2, y2, w2 = TileStream([s], tin, tout, augment=None, seed=3).item(5)  # another stream
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and np.array_equal(w, w2)
    # Without augmentation the target is the centre of the input tile, cut from the same place.
    assert not np.array_equal(stream.item(6)[0], x)


def _tiles(stream, n):
    return [x for x, _, _ in itertools.islice(iter(stream), n)]


@pytest.mark.parametrize("world, batch", [(1, 1), (1, 3), (2, 2)])
def test_stream_started_at_a_step_continues_the_stream_from_zero(world, batch, rng):
    # What a resumed run relies on: on every process, the stream of a run resumed at step k
    # (start = k * batch) yields the tiles of steps k, k + 1, ... of an uninterrupted run.
    img = rng.random((1, 40, 50)).astype(np.float32)
    s = make_sample(img, (rng.random((40, 50)) > 0.5).astype(np.uint8), mode="classes")
    k = 5
    for rank in range(world):
        def stream(start, rank=rank):
            return TileStream([s], (20, 20), (6, 6), augment=None, seed=3,
                              start=start).shard(rank, world, batch)

        whole = _tiles(stream(0), (k + 2) * batch)
        resumed = _tiles(stream(k * batch), 2 * batch)
        assert all(np.array_equal(a, b) for a, b in zip(resumed, whole[k * batch:], strict=True))
        assert not np.array_equal(resumed[0], whole[0])  # tiles differ: start was not ignored


def test_batches_do_not_depend_on_the_number_of_loader_workers(rng):
    # A loader takes each batch whole from one worker in turn; the items of step k must still be
    # k * B ... (k + 1) * B - 1, from the start of a run or of a resumed one.
    img = rng.random((1, 30, 34)).astype(np.float32)
    s = make_sample(img, (rng.random((30, 34)) > 0.5).astype(np.uint8), mode="classes")
    for start in (0, 6):
        stream = TileStream([s], (20, 20), (6, 6), augment=None, seed=2, start=start)
        stream.shard(0, 1, 2)
        loader = torch.utils.data.DataLoader(stream, batch_size=2, num_workers=2,
                                             collate_fn=stream.collate,
                                             multiprocessing_context="fork")
        it = iter(loader)
        for step in range(3):
            x, _, _ = stream.unpack(next(it), 2)
            for j in range(2):
                assert np.array_equal(x[j].numpy(), stream.item(start + 2 * step + j)[0]), \
                    (start, step, j)
        del it


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
        monkeypatch.setattr(useg.training.stream, "_SHARED_BATCH_BYTES", 0)
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


# ------------------------------------------------------------------------------ weight map units


def _touching_blocks(shape, size=9):
    """Binary label image (255 = object) of blocks separated by one-pixel background gaps."""
    lab = np.zeros(shape, np.uint8)
    index = tuple(np.arange(n) % (size + 1) != size for n in shape)
    lab[np.ix_(*index)] = 255
    lab[(slice(None, 2),) * len(shape)] = 0  # a patch of background, so w_c is not uniform
    return lab


def _write_pair(folder, name, write_image, lab):
    (folder / "images").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    image = (lab // 3 + 40).astype(np.uint8)
    write_image(folder / "images" / name, image)
    import tifffile

    tifffile.imwrite(folder / "labels" / (name.split(".")[0] + ".tif"), lab)
    return folder / "images", folder / "labels"


@pytest.mark.parametrize("calibration", ["png 72 dpi", "tiff 10 nm"])
def test_border_weights_are_in_pixels_whatever_the_files_calibration(tmp_path, calibration):
    import tifffile
    from PIL import Image

    from useg import io

    lab = _touching_blocks((40, 50))
    if calibration == "png 72 dpi":  # image editors write pHYs: 72 dpi is 352.8 um per pixel
        name, spacing = "a.png", 25400 / 72
        write = lambda path, a: Image.fromarray(a).save(path, dpi=(72, 72))  # noqa: E731
    else:
        name, spacing = "a.tif", 0.01
        write = lambda path, a: tifffile.imwrite(  # noqa: E731
            path, a, imagej=True, resolution=(1 / spacing, 1 / spacing),
            metadata={"unit": "um", "axes": "YX"})
    images, labels = _write_pair(tmp_path, name, write, lab)
    # (PNG stores whole pixels per metre: 72 dpi reads back as 352.7 um.)
    assert io.read_image(images / name)[1]["spacing"] == pytest.approx((spacing,) * 2, rel=1e-3)
    # What `useg train` does with the files, with its default options.
    (sample,) = samples.load_pairs(images, labels, ndim=2, mode="binary", w0=10.0, sigma=5.0)
    in_pixels = make_sample(lab[None], lab, mode="binary", w0=10.0, sigma=5.0)
    np.testing.assert_array_equal(sample.weight, in_pixels.weight)
    # In a one-pixel gap between two objects d1 = d2 = 1: w = w_c + 10 exp(-4 / 50) = w_c + 9.23.
    w_c = class_balance_weights(lab > 0)[lab == 0][0]
    assert lab[4, 9] == 0 and lab[4, 8] == lab[4, 10] == 255
    assert sample.weight[4, 9] == pytest.approx(w_c + 10 * np.exp(-4 / 50), rel=1e-6)
    assert sample.spacing == pytest.approx((spacing,) * 2, rel=1e-3)  # the calibration is kept


def test_border_weights_of_an_anisotropic_stack_use_the_relative_spacing(tmp_path):
    import tifffile

    lab = _touching_blocks((12, 30, 30), size=5)

    def write(path, a):
        tifffile.imwrite(path, a, imagej=True, resolution=(1 / 0.125, 1 / 0.125),
                         metadata={"unit": "um", "axes": "ZYX", "spacing": 0.5})

    images, labels = _write_pair(tmp_path, "v.tif", write, lab)
    (sample,) = samples.load_pairs(images, labels, ndim=3, mode="binary")
    # Z steps are 4 pixels of the finest axis (Y, X): sigma counts in those pixels.
    expected = make_sample(lab[None], lab, mode="binary", spacing=(4.0, 1.0, 1.0))
    np.testing.assert_allclose(sample.weight, expected.weight, rtol=1e-6)
    isotropic = make_sample(lab[None], lab, mode="binary")
    assert np.abs(sample.weight - isotropic.weight).max() > 1  # the anisotropy counts
    assert samples.relative_spacing(sample.spacing) == pytest.approx((4.0, 1.0, 1.0))
