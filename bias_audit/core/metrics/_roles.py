"""Regions combined into roles, and every per-sample metric in one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from bias_audit.core._naming import BACKGROUND, ROLES, column
from bias_audit.core.metrics._localization import (
    _ascending,
    _box_iou,
    _boxes,
    _check_maps,
    _check_threshold,
    _check_tolerance,
    _count,
    _disk,
    _map_boxes,
    _mass,
    _out,
    _pointing,
    _rank,
    _region,
    _valid,
    _values,
)
from bias_audit.errors import ConfigError, DataError

__all__ = ["METRICS", "role_masks", "sample_metrics"]

#: Per-sample metrics :func:`sample_metrics` can compute, in column-prefix form.
METRICS: tuple[str, ...] = ("mass", "lift", "rank", "pointing", "loc_iou")


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
    return _role_masks(masks, present, regions, roles)


def _role_masks(
    masks: Tensor,
    present: Tensor,
    regions: Sequence[str],
    roles: Mapping[str, Sequence[str]],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    _check_region_masks(masks, present, regions)
    index = {name: i for i, name in enumerate(regions)}
    for role, names in roles.items():
        if role not in ROLES or role == BACKGROUND:
            raise ConfigError(f"roles: unknown role {role!r}; expected one of {ROLES[:2]}")
        if isinstance(names, str):
            raise ConfigError(f"roles.{role}: expected a list of region names, got {names!r}")
        for name in names:
            if name not in index:
                raise ConfigError(f"roles.{role}: unknown region {name!r}; known: {list(regions)}")

    region_masks = masks.detach()
    here_r = present.detach().to(device=masks.device, dtype=torch.bool)
    # An absent region counts as empty, whatever its mask holds.
    kept = region_masks & here_r[:, :, None, None]
    by_name: dict[str, Tensor] = {}
    here: dict[str, Tensor] = {}
    for name, i in index.items():
        by_name[name] = kept[:, i].contiguous()
        here[name] = here_r[:, i].clone()
    for role, names in roles.items():
        idx = [index[n] for n in names]
        by_name[role] = _union(kept, idx)
        here[role] = here_r[:, idx].any(dim=1) if idx else here_r.new_zeros(here_r.shape[0])
    by_name[BACKGROUND] = ~_union(kept, range(len(regions)))
    here[BACKGROUND] = here_r.any(dim=1)
    return by_name, here


def _union(kept: Tensor, idx: Sequence[int]) -> Tensor:
    """(N, H, W) union of the chosen region masks of (N, R, H, W)."""
    # Chained ORs: torch's any() over a non-innermost dim is ~20x slower on CPU.
    # new_zeros, not zeros_like(kept[:, 0]): a manifest without regions has R == 0.
    out = kept.new_zeros((kept.shape[0], *kept.shape[2:]))
    for i in idx:
        out |= kept[:, i]
    return out


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

    The expensive parts are shared across regions and roles: each map's values are sorted
    once (``rank``), its argmax found once (``pointing``) and its largest blob boxed once
    (``loc_iou``).

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
    if isinstance(metrics, str):
        raise ConfigError(f"metrics: expected a list of metric names, got {metrics!r}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"metrics: unknown metric {unknown[0]!r}; expected some of {METRICS}")
    if not isinstance(masks, Tensor) or masks.ndim != 4 or masks.shape[-2:] != maps.shape[-2:]:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise DataError(f"masks: expected (N, R, {maps.shape[1]}, {maps.shape[2]}), got {shape}")
    if masks.shape[0] != maps.shape[0]:
        raise DataError(f"masks: {masks.shape[0]} samples for {maps.shape[0]} maps")
    by_name, here = _role_masks(masks, present, regions, roles)
    _check_threshold(threshold)
    _check_tolerance(tolerance)

    values = _values(maps)
    shape = (maps.shape[1], maps.shape[2])
    total = values.sum(dim=1)
    bad_map = ~_valid(values, total)
    ascending = _ascending(values) if "rank" in metrics else None
    blob = _map_boxes(values, shape, threshold, ~bad_map) if "loc_iou" in metrics else None
    argmax = disk = None
    if "pointing" in metrics:
        # torch's argmax returns the first maximum, i.e. the first in raster order.
        argmax = values.argmax(dim=1)
        disk = _disk(argmax, shape, float(tolerance)) if tolerance > 0 else None

    out: dict[str, Tensor] = {}
    for name, mask3d in by_name.items():
        absent = ~here[name]
        region = _region(mask3d)
        count = _count(region)
        area = count.double() / region.shape[1]
        bad = absent | bad_map | (count == 0)
        out[column("area", name)] = _out(area, absent)
        if "mass" in metrics or "lift" in metrics:
            mass = _mass(values, region, total)
        if "mass" in metrics:
            out[column("mass", name)] = _out(mass, bad)
        if "lift" in metrics:
            out[column("lift", name)] = _out(mass / area, bad)
        if ascending is not None:
            out[column("rank", name)] = _out(_rank(values, ascending, region, count), bad)
        if argmax is not None:
            out[column("pointing", name)] = _out(_pointing(argmax, region, disk), bad)
        if blob is not None:
            iou = _box_iou(blob, _boxes(mask3d))
            out[column("loc_iou", name)] = _out(iou, absent | iou.isnan())
    # Metric-major key order, so the samples table groups columns by metric.
    prefixes = ("area", *[m for m in METRICS if m in metrics])
    return {k: out[k] for p in prefixes for k in out if k.split(":", 1)[0] == p}
