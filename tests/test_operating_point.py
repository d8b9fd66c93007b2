"""A two-class model's operating point (``"operating_point"`` of its header): checked when the
header is read, and the class map ``useg predict`` writes follows it."""

import numpy as np
import pytest
import tifffile
import torch

import useg.inference.files as inference_files
from useg.cli import main
from useg.errors import InputError, ModelFileError
from useg.io import read_image
from useg.labels import most_likely_class
from useg.nets import UNet
from useg.nets.checkpoint import model_info, operating_threshold, save_model


def _model(tmp_path, meta=None, classes=2):
    torch.manual_seed(0)
    net = UNet("ronneberger2015", width=4, depth=2, classes=classes)
    return save_model(net, tmp_path / "m.safetensors", meta)


@pytest.fixture
def ramp_network(monkeypatch):
    """Class 1's probability rises from 0 to 1 across the image, whatever the image."""

    def predict(model, image, **kwargs):
        p1 = np.broadcast_to(np.linspace(0, 1, image.shape[-1], dtype=np.float32),
                             image.shape[-2:])
        return np.stack([1 - p1, p1])

    monkeypatch.setattr(inference_files, "predict", predict)


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_predict_labels_are_class_1_above_the_operating_point(tmp_path, ramp_network,
                                                               threshold):
    meta = None if threshold is None else {
        "operating_point": {"threshold_on_probabilities_1": threshold}}
    model = _model(tmp_path, meta)
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 40), np.uint8))
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a.tif"), "--model", str(model), "--out", str(out),
                 "--quiet"]) == 0
    probs, _ = read_image(out / "a_probs.tif")
    labels = tifffile.imread(out / "a_labels.tif")
    expected = probs[1] > (0.5 if threshold is None else threshold)
    np.testing.assert_array_equal(labels, expected)
    assert labels.mean() > (0.65 if threshold else 0.45)


def test_two_channel_threshold_and_more_channels_refused():
    probs = np.array([[0.6, 0.8, 0.5], [0.4, 0.2, 0.5]])
    assert most_likely_class(probs, threshold=0.3).tolist() == [1, 0, 1]
    assert most_likely_class(probs).tolist() == [0, 0, 0]
    with pytest.raises(InputError, match="one or two classes"):
        most_likely_class(np.ones((3, 2)) / 3, threshold=0.5)


@pytest.mark.parametrize("point, classes, problem", [
    ({"threshold_on_probabilities_1": 1.5}, 2, "must be a number in \\(0, 1\\)"),
    ({"threshold_on_probabilities_1": "0.4"}, 2, "must be a number in \\(0, 1\\)"),
    ({}, 2, "must be a number in \\(0, 1\\)"),
    (0.4, 2, "must be a JSON object"),
    ({"threshold_on_probabilities_1": 0.4}, 3, "needs a network of two classes"),
])
def test_a_bad_operating_point_is_one_line_naming_the_file(tmp_path, point, classes, problem):
    model = _model(tmp_path, {"operating_point": point}, classes=classes)
    with pytest.raises(ModelFileError, match=problem) as err:
        model_info(model)
    assert str(model) in str(err.value) and "\n" not in str(err.value)


def test_operating_threshold_reads_the_header(tmp_path):
    model = _model(tmp_path, {"operating_point": {"threshold_on_probabilities_1": 0.35}})
    assert operating_threshold(model_info(model)) == 0.35
    assert operating_threshold(model_info(_model(tmp_path))) is None
