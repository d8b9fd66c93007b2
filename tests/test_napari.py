"""The napari plugin: a valid, installed npe2 manifest; the widget adds probabilities, classes
and instances placed like the input layer, and its probabilities are ``useg.predict``'s; the
sample data opens.

The viewer tests need the ``napari`` extra (``pip install useg[napari]``) and an X display with
OpenGL: pytest-xvfb (which starts Xvfb for the session) or ``xvfb-run``; Qt's offscreen platform
is not enough, napari's canvas needs an OpenGL context. Without napari, or without a display,
they skip and say why.
"""

import importlib.metadata
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import useg
from useg.errors import InputError
from useg.labels import most_likely_class
from useg.napari_plugin.sample import touching_cells_sample
from useg.napari_plugin.segment import result_layers, segment_array
from useg.nets import UNet, load_model, save_model
from useg.workflows.segment import instance_settings, instances_of

HAVE_NAPARI = importlib.util.find_spec("napari") is not None
needs_napari = pytest.mark.skipif(
    not HAVE_NAPARI or not os.environ.get("DISPLAY"),
    reason="napari not installed (pip install useg[napari])" if not HAVE_NAPARI else
    "no X display for napari's OpenGL canvas (pip install pytest-xvfb, or run under xvfb-run)")

MANIFEST = Path(useg.__file__).parent / "napari.yaml"
META = {"normalization": {"mode": "percentile", "low": 1.0, "high": 99.0},
        "labels": {"mode": "binary", "classes": ["background", "cell"], "foreground_class": 1}}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 2D U-Net small enough to predict a 64 x 48 image in well under a second."""
    torch.manual_seed(0)
    net = UNet("ronneberger2015", width=2, depth=2).eval()
    return save_model(net, tmp_path_factory.mktemp("model") / "tiny.safetensors", META)


def _image(shape=(64, 48)):
    return np.random.default_rng(0).random(shape).astype(np.float32)


def test_segment_array_is_useg_predict(tiny_model):
    """The widget's computation: ``useg.predict`` slice by slice for a 2D model on a stack,
    the most likely class, the objects of ``useg predict --instances``, progress to the end."""
    stack = _image((3, 64, 48))
    seen = []
    result = segment_array(stack, tiny_model, spacing=(4.0, 1.0, 1.0), device="cpu",
                           instances=True, progress=lambda done, total: seen.append((done, total)))
    net = load_model(tiny_model)
    expect = np.stack([useg.predict(net, s, device="cpu") for s in stack], axis=1)
    np.testing.assert_array_equal(result.probabilities, expect)
    np.testing.assert_array_equal(result.classes, most_likely_class(expect))
    target, params, _ = instance_settings(tiny_model)
    np.testing.assert_array_equal(result.instances,
                                  instances_of(target, params, 2)(expect, (4.0, 1.0, 1.0)))
    assert seen[-1][0] == seen[-1][1] and seen[-1][1] >= 3
    assert result.labels == META["labels"] and "defaults" in result.note
    layers = result_layers(result, "img", scale=(4.0, 2.0, 0.5), translate=(0.0, 10.0, 5.0))
    assert [(k["name"], kind) for _, k, kind in layers] == [
        ("img probabilities", "image"), ("img classes", "labels"), ("img instances", "labels")]
    assert layers[0][1]["scale"] == (1.0, 4.0, 2.0, 0.5)
    assert layers[1][1]["scale"] == (4.0, 2.0, 0.5)
    assert layers[1][1]["translate"] == (0.0, 10.0, 5.0)


def test_segment_array_refuses_in_one_line(tiny_model):
    rgb = np.zeros((64, 48, 3), np.float32)
    with pytest.raises(InputError, match="3 channel.*expects 1"):
        segment_array(rgb, tiny_model, rgb=True, device="cpu")
    with pytest.raises(InputError, match="complex"):
        segment_array(np.ones((64, 48), np.complex64) * 1j, tiny_model, device="cpu")


def test_sample_data_is_touching_cells():
    (image, image_kw, image_kind), (cells, _, cells_kind) = touching_cells_sample()
    assert (image_kind, cells_kind) == ("image", "labels")
    assert image.shape == cells.shape == (256, 256) and cells.max() > 10
    assert image_kw["name"] == "touching cells"


def test_manifest_is_valid_and_installed():
    """``npe2 validate --imports`` on the file, and the entry point napari discovers it by."""
    npe2 = pytest.importorskip("npe2", reason="npe2 not installed (pip install useg[napari])")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # every python_name imports
    assert manifest.name == "useg"
    assert {c.id for c in manifest.contributions.commands} == {"useg.segment",
                                                                "useg.touching_cells"}
    points = importlib.metadata.entry_points(group="napari.manifest")
    assert [p.value for p in points if p.name == "useg"] == ["useg:napari.yaml"]
    assert npe2.PluginManifest.from_distribution("useg").name == "useg"


def _wait(qtbot, widget, click=False):
    if click:  # through the button, as a user starts it
        widget.run_button.native.click()
    worker = widget.worker if click else widget.run()
    assert worker is not None
    # Enabled again on the worker's `finished`, which follows `returned` (the layers added).
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    return worker


@needs_napari
def test_widget_adds_layers_like_the_image(make_napari_viewer, qtbot, tiny_model):
    from useg.napari_plugin.widget import MODEL_FILE, SegmentWidget

    viewer = make_napari_viewer()
    image = _image()
    layer = viewer.add_image(image, name="cells", scale=(2.0, 0.5), translate=(10.0, 5.0))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.image.value is layer
    widget.model.value = MODEL_FILE
    widget.model_file.value = tiny_model
    widget.device.value = "cpu"
    widget.instances.value = True
    _wait(qtbot, widget)
    assert widget.status.value.startswith("cells: done"), widget.status.value
    assert widget.progress.value == widget.progress.max > 0
    probs = viewer.layers["cells probabilities"]
    classes = viewer.layers["cells classes"]
    objects = viewer.layers["cells instances"]
    assert probs.data.shape == (2, 64, 48)
    assert classes.data.shape == objects.data.shape == (64, 48)
    np.testing.assert_array_equal(probs.scale, (1.0, 2.0, 0.5))
    np.testing.assert_array_equal(probs.translate, (0.0, 10.0, 5.0))
    for labels in (classes, objects):
        np.testing.assert_array_equal(labels.scale, (2.0, 0.5))
        np.testing.assert_array_equal(labels.translate, (10.0, 5.0))
    expect = useg.predict(load_model(tiny_model), image, device="cpu")
    np.testing.assert_array_equal(probs.data, expect)
    np.testing.assert_array_equal(classes.data, most_likely_class(expect))
    assert viewer.dims.current_step[0] == 1  # the foreground class is shown
    # A second run, from the button, replaces the results rather than adding more layers.
    widget.instances.value = False
    first = widget.worker
    assert _wait(qtbot, widget, click=True) is not first
    assert len(viewer.layers) == 4
    assert "cells instances" in viewer.layers  # kept from the first run: not asked this time


@needs_napari
def test_widget_shows_errors(make_napari_viewer, qtbot, tiny_model):
    from useg.napari_plugin.widget import MODEL_FILE, SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 48, 3), np.uint8), name="rgb", rgb=True)
    widget = SegmentWidget(viewer)
    widget.model.value = MODEL_FILE
    assert widget.run() is None  # no file chosen: refused before any thread starts
    assert widget.status.value == "error: choose a model file (.safetensors)"
    widget.model_file.value = tiny_model
    widget.device.value = "cpu"
    _wait(qtbot, widget)
    assert "3 channel(s) but the model expects 1" in widget.status.value
    assert [layer.name for layer in viewer.layers] == ["rgb"]


@needs_napari
def test_sample_data_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("useg", "touching-cells")
    assert [layer.name for layer in viewer.layers] == ["touching cells",
                                                         "touching cells (truth)"]
