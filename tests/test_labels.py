import numpy as np
import pytest

from useg.labels import most_likely_class


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_most_likely_class_equals_argmax_including_ties(classes):
    rng = np.random.default_rng(classes)
    p = rng.random((classes, 37, 41)).astype(np.float32)
    p[:, :3] = 0.5  # all classes tie: the first wins, as with argmax
    p[1, 5] = p[-1, 5]  # ties between two classes
    p = np.round(p, 1)  # many more ties
    assert np.array_equal(most_likely_class(p), np.argmax(p, axis=0))


def test_most_likely_class_dtype_and_3d():
    p = np.random.default_rng(0).random((4, 5, 6, 7))
    out = most_likely_class(p, np.int32)
    assert out.dtype == np.int32 and out.shape == (5, 6, 7)
    assert np.array_equal(out, np.argmax(p, axis=0))
