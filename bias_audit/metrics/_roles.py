"""Regions combined into roles, and every per-sample metric in one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .._naming import BACKGROUND, ROLES, column
from ..errors import ConfigError, DataError
from ._localization import (
    _box_iou,
    _boxes,
    _check_maps,
    _descending_order,
    _map_boxes,
    _mass,
    _pointing,
    _rank_from_order,
    _valid_maps,
)

__all__ = ["METRICS", "role_masks", "sample_metrics"]

#: Per-sample metrics :func:`sample_metrics` can compute, in column-prefix form.
METRICS: tuple[str, ...] = ("mass", "lift", "rank", "pointing", "loc_iou")

_NAN = float("nan")


def _check_region_masks(masks: Tensor, present: Tensor, regions: Sequence[str]) -> None:
    if not isinstance(masks, Tensor) or masks.ndim != 4 or masks.dtype != torch.bool:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise DataError(f"masks: expected a bool tensor (N, R, H, W), got {shape}")
    if not isinstance(present, Tensor) or present.shape != masks.shape[:2]:
        shape = tuple(present.shape) if isinstance(present, Tensor) else type(present).__name__
        raise DataError(f"present: expected a bool tensor {tuple(masks.shape[:2])}, got {shape}")
    if len(regions) != masks.shape[1]:
        raise DataError(f"regions: {len(regions)} names for {masks.shape[1]} masks")
    if len(set(regions)) != len(regions):
        raise ConfigError(f"regions: duplicate names in {list(regions)}")
    clash = [r for r in regions if r in ROLES]
    if clash:
        raise ConfigError(f"regions: {clash[0]!r} is a role name and cannot name a region")


def role_masks(
    masks: Tensor,
    present: Tensor,
    regions: Sequence[str],
    roles: Mapping[str, Sequence[str]],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Masks and presence for each region and each role.

    A role's mask is the union of its regions' masks, and the role is present when any of its
    regions is. ``background`` is everything outside all annotated, present regions (whether or
    not they belong to a role); it counts as present when the image has at least one present
    region, since an image without annotations says nothing about its background.

    Args:
        masks: (N, R, H, W) bool, in ``regions`` order.
        present: (N, R) bool; a region that is not present is treated as empty.
        regions: R region names.
        roles: role name (``causal`` or ``confounder``) -> region names.

    Returns:
        ``(masks_by_name, present_by_name)``: dicts from each region name, then each role in
        ``roles`` and ``background``, to a (N, H, W) bool mask and a (N,) bool presence.

    Raises:
        ConfigError: an unknown role or region name (the message names it).
    """
    _check_region_masks(masks, present, regions)
    present = present.bool()
    index = {name: i for i, name in enumerate(regions)}
    for role, names in roles.items():
        if role not in ROLES or role == BACKGROUND:
            raise ConfigError(f"roles: unknown role {role!r}; expected one of {ROLES[:2]}")
        if isinstance(names, str):
            raise ConfigError(f"roles.{role}: expected a list of region names, got {names!r}")
        for name in names:
            if name not in index:
                raise ConfigError(f"roles.{role}: unknown region {name!r}; known: {list(regions)}")

    kept = masks & present[:, :, None, None]
    by_name: dict[str, Tensor] = {}
    here: dict[str, Tensor] = {}
    for name, i in index.items():
        by_name[name] = kept[:, i]
        here[name] = present[:, i]
    for role, names in roles.items():
        idx = [index[n] for n in names]
        if idx:
            by_name[role] = kept[:, idx].any(dim=1)
            here[role] = present[:, idx].any(dim=1)
        else:
            by_name[role] = torch.zeros_like(masks[:, 0])
            here[role] = torch.zeros_like(present[:, 0])
    by_name[BACKGROUND] = ~kept.any(dim=1)
    here[BACKGROUND] = present.any(dim=1)
    return by_name, here


def sample_metrics(
    maps: Tensor,
    masks: Tensor,
    present: Tensor,
    regions: Sequence[str],
    roles: Mapping[str, Sequence[str]],
    *,
    metrics: Sequence[str] = METRICS,
    threshold: float = 0.15,
    tolerance: float = 0.0,
) -> dict[str, Tensor]:
    """Every per-sample metric for every region and role, keyed like the samples table.

    The expensive parts are shared across regions: the map's rank order is sorted once and its
    largest-blob box (for ``loc_iou``) found once per map.

    Args:
        maps: (N, H, W) float >= 0.
        masks: (N, R, H, W) bool, in ``regions`` order.
        present: (N, R) bool.
        regions: R region names.
        roles: role name -> region names (see :func:`role_masks`).
        metrics: a subset of :data:`METRICS`.
        threshold: binarisation share for ``loc_iou``.
        tolerance: pointing-game tolerance in pixels.

    Returns:
        Dict from ``area:<name>`` and ``<metric>:<name>`` (names: each region, then each role in
        ``roles``, then ``background``) to (N,) float32. Every value is NaN where the region or
        role is absent; metrics are also NaN where the map is all zero or the mask empty.
    """
    _check_maps(maps)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"metrics: unknown metric {unknown[0]!r}; expected some of {METRICS}")
    if not isinstance(masks, Tensor) or masks.ndim != 4 or masks.shape[-2:] != maps.shape[-2:]:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise DataError(f"masks: expected (N, R, {maps.shape[1]}, {maps.shape[2]}), got {shape}")
    if masks.shape[0] != maps.shape[0]:
        raise DataError(f"masks: {masks.shape[0]} samples for {maps.shape[0]} maps")
    by_name, here = role_masks(masks, present, regions, roles)

    valid = _valid_maps(maps)
    order = _descending_order(maps) if "rank" in metrics else None
    blob = _map_boxes(maps, threshold, valid) if "loc_iou" in metrics else None

    out: dict[str, Tensor] = {}
    for name, mask in by_name.items():
        absent = ~here[name]
        area = mask.flatten(1).float().mean(dim=1)
        out[column("area", name)] = area.masked_fill(absent, _NAN)
        mass = _mass(maps, mask, valid).masked_fill(absent, _NAN)
        if "mass" in metrics:
            out[column("mass", name)] = mass
        if "lift" in metrics:
            out[column("lift", name)] = mass / area
        if order is not None:
            out[column("rank", name)] = _rank_from_order(order, mask, valid).masked_fill(
                absent, _NAN
            )
        if "pointing" in metrics:
            out[column("pointing", name)] = _pointing(maps, mask, valid, tolerance).masked_fill(
                absent, _NAN
            )
        if blob is not None:
            out[column("loc_iou", name)] = _box_iou(blob, _boxes(mask)).masked_fill(absent, _NAN)
    # Metric-major key order, so the samples table groups columns by metric.
    prefixes = ("area", *[m for m in METRICS if m in metrics])
    return {k: out[k] for p in prefixes for k in out if k.split(":", 1)[0] == p}
