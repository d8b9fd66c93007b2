"""The network: its configuration and presets (:mod:`~useg.nets.config`), shape algebra and cost
model (:mod:`~useg.nets.geometry`), the U-Net itself (:mod:`~useg.nets.unet`), its inference
forward pass (:mod:`~useg.nets.forward`), the model file (:mod:`~useg.nets.checkpoint`) and its
export to ONNX or TorchScript (:mod:`~useg.nets.export`, imported on use: ``useg export``).
"""

from __future__ import annotations

from useg.nets.checkpoint import load_model, model_info, resolve_model, save_model
from useg.nets.config import PRESETS, UNetConfig, preset
from useg.nets.geometry import (
    anisotropic_pools,
    halo,
    is_valid_input,
    min_input_shape,
    output_shape,
    pool_step,
    receptive_radius,
    valid_input_shape,
)
from useg.nets.unet import UNet

__all__ = [
    "PRESETS",
    "UNet",
    "UNetConfig",
    "anisotropic_pools",
    "halo",
    "is_valid_input",
    "load_model",
    "min_input_shape",
    "model_info",
    "output_shape",
    "pool_step",
    "preset",
    "receptive_radius",
    "resolve_model",
    "save_model",
    "valid_input_shape",
]
