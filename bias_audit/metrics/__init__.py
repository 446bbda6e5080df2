"""Localisation metrics, occlusion interventions and group statistics.

Per-sample metrics are pure functions over batched tensors (``maps`` (N, H, W) first, then
``masks`` (N, H, W) or ``boxes`` (N, 4)); NaN marks a degenerate input, never a score.
"""

from ._interventions import FILLS, Occlusion, occlusion_effect, random_patches
from ._localization import (
    area_fraction,
    attention_mass,
    boxes_from_masks,
    lift,
    localization_iou,
    map_boxes,
    pointing_game,
    rank_accuracy,
)
from ._roles import METRICS, role_masks, sample_metrics

__all__ = [
    "FILLS",
    "METRICS",
    "Occlusion",
    "occlusion_effect",
    "random_patches",
    "area_fraction",
    "attention_mass",
    "boxes_from_masks",
    "lift",
    "localization_iou",
    "map_boxes",
    "pointing_game",
    "rank_accuracy",
    "role_masks",
    "sample_metrics",
]
