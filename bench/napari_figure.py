"""docs/figures/napari.png: the napari widget after segmenting an ISBI 2012 slice.

Opens challenge test image 0 of the shared ISBI 2012 folder (``io.datasets``; PROVENANCE.md:
ssTEM, 4 x 4 nm pixels) in napari, docks useg's widget from its npe2 manifest, runs the
packaged ``em-membrane`` model with instances, and saves a screenshot of the whole window.

Needs the napari extra and an X display with OpenGL::

    xvfb-run -a -s "-screen 0 1600x1000x24" python bench/napari_figure.py
"""

from __future__ import annotations

import time
from pathlib import Path

FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "napari.png"


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from useg.io import read_image
    from useg.io.datasets import dataset

    image, _ = read_image(dataset("isbi2012") / "test" / "images" / "0.png")
    viewer = napari.Viewer(title="useg in napari")
    viewer.window.resize(1500, 900)
    viewer.add_image(image[0], name="isbi 0", scale=(4.0, 4.0))  # 4 nm pixels
    _, widget = viewer.window.add_plugin_dock_widget("useg", "Segment (U-Net)")
    widget.model.value = "em-membrane"
    widget.instances.value = True
    widget.run()
    app = QApplication.instance()
    while not widget.run_button.enabled:  # the worker re-enables it once the layers are added
        app.processEvents()
        time.sleep(0.05)
    # Side by side: the slice, the cell-interior probability, and the objects over the slice.
    viewer.layers["isbi 0 classes"].visible = False
    viewer.layers.selection.active = viewer.layers["isbi 0 instances"]
    viewer.grid.enabled = True
    viewer.reset_view()
    for _ in range(20):  # let the canvas and the widgets draw
        app.processEvents()
        time.sleep(0.05)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(FIGURE), canvas_only=False)
    print(f"{FIGURE}: {widget.status.value}")
    viewer.close()


if __name__ == "__main__":
    main()
