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
from ._stats import (
    ALL_CELL,
    bootstrap_ci,
    fairness_differences,
    group_gaps,
    group_stats,
    holm,
    paired_comparison,
    wilson_interval,
)

__all__ = [
    "ALL_CELL",
    "FILLS",
    "METRICS",
    "area_fraction",
    "attention_mass",
    "bootstrap_ci",
    "boxes_from_masks",
    "fairness_differences",
    "group_gaps",
    "group_stats",
    "holm",
    "lift",
    "localization_iou",
    "map_boxes",
    "Occlusion",
    "occlusion_effect",
    "paired_comparison",
    "pointing_game",
    "random_patches",
    "rank_accuracy",
    "role_masks",
    "sample_metrics",
    "wilson_interval",
]
