"""Localisation metrics and occlusion interventions.

Per-sample metrics are pure functions over batched tensors (``maps`` (N, H, W) first, then
``masks`` (N, H, W) or ``boxes`` (N, 4)); NaN marks a degenerate input, never a score.
"""

from bias_audit.core.metrics._interventions import (
    FILLS,
    Occlusion,
    occlusion_effect,
    random_patches,
)
from bias_audit.core.metrics._localization import (
    area_fraction,
    attention_mass,
    boxes_from_masks,
    lift,
    localization_iou,
    map_boxes,
    pointing_game,
    rank_accuracy,
)
from bias_audit.core.metrics._roles import METRICS, role_masks, sample_metrics

__all__ = [
    "FILLS",
    "METRICS",
    "area_fraction",
    "attention_mass",
    "boxes_from_masks",
    "lift",
    "localization_iou",
    "map_boxes",
    "Occlusion",
    "occlusion_effect",
    "pointing_game",
    "random_patches",
    "rank_accuracy",
    "role_masks",
    "sample_metrics",
]
