"""The plugin's sample data: useg's synthetic touching cells (no napari import needed)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["touching_cells_sample"]


def touching_cells_sample() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """A 256 x 256 image of touching cells and its objects
    (:func:`useg.workflows.synthetic.touching_cells`, seed 0), as napari layer data tuples."""
    from useg.workflows.synthetic import touching_cells

    image, cells = touching_cells((256, 256), rng=0)
    return [
        (image[0], {"name": "touching cells"}, "image"),
        (cells, {"name": "touching cells (truth)", "opacity": 0.4}, "labels"),
    ]
