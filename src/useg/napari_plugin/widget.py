"""The napari dock widget: segment the selected image layer with a U-Net.

The widget only collects settings, runs :func:`useg.napari_plugin.segment.segment_array` in a
napari ``thread_worker`` (the viewer stays responsive) and adds what
:func:`useg.napari_plugin.segment.result_layers` returns; all the computing is the library's.
This is the one module of useg that imports napari and Qt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from superqt.utils import ensure_main_thread

from useg.errors import InputError, UsegError
from useg.napari_plugin.segment import Segmentation, result_layers, segment_array
from useg.nets.checkpoint import packaged_models

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentWidget"]

# The model choice that means "the file chosen below" rather than a packaged model.
MODEL_FILE = "model file…"


class SegmentWidget(Container):
    """Segment an image layer: a packaged model or a ``.safetensors`` file, tile size,
    test-time augmentation, device, and optionally objects (instances).

    Adds ``<image> probabilities`` (image layer, classes on the first axis), ``<image> classes``
    and, with instances, ``<image> instances`` (label layers), with the image layer's scale and
    translation; a second run replaces them.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose layers are listed and receive the results (napari passes it).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.model = ComboBox(label="model", choices=[*packaged_models(), MODEL_FILE])
        self.model_file = FileEdit(label="model file", mode="r", filter="*.safetensors")
        self.tile = SpinBox(label="tile (0: auto)", min=0, max=8192, step=16, value=0)
        self.tta = CheckBox(text="test-time augmentation (slower)")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.instances = CheckBox(text="instances (one label per object)")
        self.run_button = PushButton(text="Run")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(value="")
        self.extend([self.image, self.model, self.model_file, self.tile, self.tta, self.device,
                     self.instances, self.run_button, self.progress, self.status])
        self.model_file.visible = False
        self.max_width = 420  # the viewer's canvas keeps the room; the options are short
        self.model.changed.connect(self._model_changed)
        self.run_button.changed.connect(self.run)
        # The layer list changes while the widget is docked; keep the choice of images current.
        napari_viewer.layers.events.inserted.connect(self.image.reset_choices)
        napari_viewer.layers.events.removed.connect(self.image.reset_choices)
        self.worker: Any = None  # the running (or last) thread_worker, for tests and callers

    def _image_layers(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _model_changed(self, value: str) -> None:
        self.model_file.visible = value == MODEL_FILE

    def _chosen_model(self) -> str | Path:
        if self.model.value != MODEL_FILE:
            return self.model.value
        path = Path(self.model_file.value or "")
        if not path.is_file():
            raise InputError("choose a model file (.safetensors)")
        return path

    def run(self) -> Any:
        """Start the segmentation of the chosen image layer in a background thread.

        Returns
        -------
        The started napari worker (None when the settings were refused; the reason is shown).
        """
        layer = self.image.value
        try:
            if layer is None:
                raise InputError("no image layer to segment: open or add an image first")
            model = self._chosen_model()
        except UsegError as exc:
            self._failed(exc)
            return None
        data = layer.data[0] if layer.multiscale else layer.data  # full resolution
        name, scale, translate = layer.name, tuple(layer.scale), tuple(layer.translate)
        # A thread_worker, with our own error handler: the default one re-raises in the main
        # thread, where a user error would become a traceback instead of one line.
        self.worker = create_worker(
            segment_array, data, model, rgb=bool(layer.rgb), spacing=scale,
            tile=self.tile.value or None, tta=self.tta.value, device=self.device.value,
            instances=self.instances.value, progress=self._show_progress,
            _connect={"returned": lambda result: self._add_results(result, name, scale,
                                                                   translate),
                      "errored": self._failed, "finished": self._finished},
            _start_thread=False)
        self.run_button.enabled = False
        self.progress.value = 0
        self.status.value = f"segmenting {name}…"
        self.worker.start()
        return self.worker

    @ensure_main_thread
    def _show_progress(self, done: int, total: int) -> None:
        # Called from the worker thread by the tiler; Qt widgets change on the main thread only.
        self.progress.max = total
        self.progress.value = done

    def _add_results(self, result: Segmentation, name: str, scale: Any, translate: Any) -> None:
        viewer = self._viewer
        for data, kwargs, kind in result_layers(result, name, scale=scale, translate=translate):
            if kwargs["name"] in viewer.layers:
                viewer.layers.remove(kwargs["name"])
            getattr(viewer, f"add_{kind}")(data, **kwargs)
        foreground = result.labels.get("foreground_class")
        if isinstance(foreground, int) and 0 <= foreground < result.probabilities.shape[0]:
            # Show the foreground's probabilities rather than class 0's (the class slider).
            viewer.dims.set_current_step(viewer.dims.ndim - result.probabilities.ndim, foreground)
        self.status.value = f"{name}: done"
        if result.note:  # long: a notification, and the status's tooltip
            self.status.tooltip = result.note
            show_info(result.note)

    def _failed(self, exc: BaseException) -> None:
        line = str(exc) if isinstance(exc, UsegError) else f"{type(exc).__name__}: {exc}"
        self.status.value = f"error: {line}"
        show_error(f"useg: {line}")

    def _finished(self) -> None:
        self.run_button.enabled = True
