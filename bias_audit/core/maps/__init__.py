"""Class-activation maps (Grad-CAM family, Score-CAM, guided methods) from one forward pass.

from bias_audit.core.maps import explain
exp = explain(model, images, methods=("gradcam", "gradcam++"), target_layer="layer4")
exp.maps["gradcam"]   # (N, H, W) float32 >= 0, not normalised
"""

from __future__ import annotations

from bias_audit.core.maps._explain import METHODS, Explanation, explain, explain_layers
from bias_audit.core.maps._layers import (
    Grid,
    Reshape,
    fast_layout,
    layer_grid,
    layer_output,
    resolve_target_layer,
    to_grid,
)
from bias_audit.core.maps._overlay import normalize_maps, overlay
from bias_audit.core.maps._weights import gradcam

__all__ = [
    "METHODS",
    "Explanation",
    "Grid",
    "Reshape",
    "explain",
    "explain_layers",
    "fast_layout",
    "gradcam",
    "layer_grid",
    "layer_output",
    "normalize_maps",
    "overlay",
    "resolve_target_layer",
    "to_grid",
]
