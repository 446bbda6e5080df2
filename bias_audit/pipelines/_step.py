"""The pure batch step: a batch in, rows of the samples table out. No I/O, no state.

Kept pure so that a distributed engine can map it over shards later; everything it needs is
in the model, the batch and a frozen :class:`StepSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from bias_audit.core._naming import ROLES, column
from bias_audit.core.discovery import downsample_maps
from bias_audit.core.maps import explain
from bias_audit.core.metrics import occlusion_effect, role_masks, sample_metrics

if TYPE_CHECKING:  # pragma: no cover
    from bias_audit.core.maps import Explanation
    from bias_audit.io.data import Batch

__all__ = [
    "StepSpec",
    "Explained",
    "audit_batch",
    "explain_batch",
    "batch_rows",
    "method_column",
    "head_of",
    "MAP_OK",
    "DISCOVERY_MAP",
    "DISCOVERY_FEATURES",
]

#: Column: the first method's map has a positive, finite total (else its metrics are NaN).
MAP_OK = "map_ok"
#: Part columns for the discovery phase, dropped from the samples table: the first method's
#: map area-averaged to ``discovery_size``² cells and normalised to sum 1 (all zero for a map
#: without mass), and the classifier head's input; both float16 bytes, row-major. Kept in the
#: batch's part, so they share its checksum and its resume, and travel with the rows from a
#: Ray actor.
DISCOVERY_MAP = "discovery:map"
DISCOVERY_FEATURES = "discovery:features"


@dataclass(frozen=True, kw_only=True)
class StepSpec:
    """What :func:`audit_batch` needs besides the model and the batch.

    Attributes:
        model: the model's name (the ``model`` column).
        classes: class names in logit order.
        methods: explain methods; all are measured, the first under the plain column names
            and each other one under ``<column>@<method>``; the first decides ``map_ok``.
        target: ``"predicted"`` or ``"label"``: which class is explained.
        target_layer: dotted layer name, or None for explain's automatic choice.
        roles: ``{"causal": (...), "confounder": (...)}`` region names.
        groups: group attribute names (columns copied from the batch).
        interventions: also occlude each role (one forward pass per role).
        baseline: with interventions, also occlude a same-area random patch per role (one
            more pass per role); off, the ``*_random:`` columns are NaN.
        fill: occlusion fill.
        occlude_regions: region names also occluded one by one with the roles (one more pass
            each, two with the baseline): ``flip:<region>``, ``drop:<region>`` ... columns.
        seed: seed of the random patches.
        discovery_size: side of the downsampled maps kept for discovery (the
            ``discovery:map`` column); 0 keeps none.
        discovery_features: also keep the classifier head's input (``discovery:features``,
            empty bytes for a model without an ``nn.Linear``); only with ``discovery_size``.
    """

    model: str
    classes: tuple[str, ...]
    methods: tuple[str, ...] = ("gradcam",)
    target: str = "predicted"
    target_layer: str | None = None
    roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    groups: tuple[str, ...] = ()
    interventions: bool = True
    baseline: bool = True
    fill: str = "blur"
    occlude_regions: tuple[str, ...] = ()
    seed: int = 0
    discovery_size: int = 0
    discovery_features: bool = False


@dataclass(frozen=True)
class Explained:
    """What :func:`explain_batch` gives :func:`batch_rows`: the explanation, and the
    classifier head's input of the same forward pass ((N, D) float, or None when it was not
    asked for or the model has no ``nn.Linear``)."""

    exp: Explanation
    features: torch.Tensor | None = None


def head_of(model: nn.Module) -> nn.Module | None:
    """The classifier head: the last ``nn.Linear`` registered (its input is the penultimate
    representation); None for a model without one."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


def _numpy(t: torch.Tensor):
    return t.detach().float().cpu().numpy()


def audit_batch(model: nn.Module, batch: Batch, *, spec: StepSpec) -> pd.DataFrame:
    """Explain one batch, measure attention per region and role, and occlude the roles.

    One explain pass gives the predictions and the maps; interventions cost one extra forward
    pass per role and per region of ``spec.occlude_regions`` plus one per same-area random
    patch (the baseline), reusing the logits of
    the explain pass. Equal to ``batch_rows(model, batch, explain_batch(model, batch, ...))``;
    the run loop calls the two halves separately to overlap them across batches.

    Args:
        model: a classifier (eval mode) on the batch's device.
        batch: a :class:`bias_audit.data.Batch`: images (N,3,S,S), labels (N,), masks
            (N,R,S,S) bool, present (N,R) bool, ids, attrs.
        spec: see :class:`StepSpec`.

    Returns:
        N rows with the samples-table columns (docs/design.md), plus ``map_ok``. Metric
        columns are NaN where a region is absent or the map is all zero or not finite.
        ``rows.attrs`` holds ``target_layer`` and ``layer_shape`` of the explain pass.
    """
    return batch_rows(model, batch, explain_batch(model, batch, spec=spec), spec=spec)


def explain_batch(model: nn.Module, batch: Batch, *, spec: StepSpec) -> Explained:
    """The model half of :func:`audit_batch`: one explain pass -> :class:`Explained`.

    With ``spec.discovery_features`` a pre-hook on the head records its input in the same
    pass: no second pass over the data for discovery.
    """

    device = next(iter(model.parameters()), torch.empty(0)).device
    targets = batch.labels.to(device) if spec.target == "label" else None
    head = head_of(model) if spec.discovery_size and spec.discovery_features else None
    seen: list[torch.Tensor] = []

    def record(_m, args) -> None:
        x = args[0].detach()
        # a Linear acts on the last dim: average any token/spatial dims in between
        seen.append(x.reshape(len(x), -1, x.shape[-1]).mean(dim=1).float().cpu().clone())

    handle = head.register_forward_pre_hook(record) if head is not None else None
    try:
        exp = explain(
            model, batch.images.to(device), methods=spec.methods,
            target_layer=spec.target_layer, targets=targets,
        )  # fmt: skip
    finally:
        if handle is not None:
            handle.remove()
    # The batch's own forward pass is the first of its size: a layer probe runs one image
    # before it (the same image when the batch has one) and Score-CAM's masked passes after.
    hit = next((x for x in seen if x.shape[0] == len(batch.ids)), None)
    return Explained(exp=exp, features=hit)


def batch_rows(model: nn.Module, batch: Batch, out: Explained, *, spec: StepSpec) -> pd.DataFrame:
    """The table half of :func:`audit_batch`: metrics (and interventions) -> rows.

    Without interventions it never calls ``model``, so it can run beside the next batch's
    :func:`explain_batch`.
    """

    exp = out.exp
    logits = exp.logits.detach()
    probs = torch.softmax(logits.float(), dim=1)
    pred = logits.argmax(dim=1)
    target = exp.targets.long().to(probs.device)
    prob = probs.gather(1, target[:, None])[:, 0]

    masks = batch.masks.cpu()
    present = batch.present.cpu()
    roles = {r: tuple(spec.roles.get(r, ())) for r in ROLES[:2]}
    maps = _saliency(exp.maps[spec.methods[0]])
    metric_cols = sample_metrics(maps, masks, present, batch.regions, roles)
    # Every listed method is measured on every image: the first keeps the plain names.
    for method in spec.methods[1:]:
        more = sample_metrics(_saliency(exp.maps[method]), masks, present, batch.regions, roles)
        # A region's area does not depend on the map: it stays in the first method's column.
        metric_cols.update(
            {method_column(k, method): v for k, v in more.items() if not k.startswith("area:")}
        )
    total = maps.flatten(1).sum(dim=1)

    classes = spec.classes
    labels = batch.labels.cpu().tolist()
    preds = pred.cpu().tolist()
    data: dict[str, object] = {
        "model": [spec.model] * len(batch.ids),
        "id": list(batch.ids),
        "label": [classes[i] for i in labels],
        "pred": [classes[i] for i in preds],
        "correct": [a == b for a, b in zip(labels, preds, strict=True)],
        "prob": _numpy(prob),
        "target": [classes[i] for i in target.cpu().tolist()],
    }
    for g in spec.groups:
        data[g] = list(batch.attrs[g])
    for name, values in metric_cols.items():
        data[name] = _numpy(values)
    if spec.interventions:
        device = next(iter(model.parameters()), torch.empty(0)).device
        stacked = _role_masks(masks, present, batch.regions, roles)
        names = (*ROLES, *spec.occlude_regions)
        if spec.occlude_regions:
            stacked = torch.cat(
                [stacked, _region_masks(masks, present, batch.regions, spec.occlude_regions)],
                dim=1,
            )
        occ = occlusion_effect(
            model, batch.images.to(device), stacked.to(device), target.cpu(),
            fill=spec.fill, logits=logits, baseline=spec.baseline, seed=spec.seed,
        )  # fmt: skip
        for j, role in enumerate(names):
            data[column("flip", role)] = _numpy(occ.flip[:, j])
            data[column("drop", role)] = _numpy(occ.drop_prob[:, j])
            data[column("flip_random", role)] = _numpy(occ.flip_random[:, j])
            data[column("drop_random", role)] = _numpy(occ.drop_prob_random[:, j])
    data[MAP_OK] = _numpy(torch.isfinite(total) & (total > 0)).astype(bool)
    if spec.discovery_size:
        small, _ = downsample_maps(maps, size=spec.discovery_size)
        data[DISCOVERY_MAP] = _rows_bytes(small)
        feats = out.features if spec.discovery_features else None
        data[DISCOVERY_FEATURES] = _rows_bytes(feats) if feats is not None else [b""] * len(small)
    rows = pd.DataFrame(data)
    rows.attrs["target_layer"] = exp.target_layer
    rows.attrs["layer_shape"] = [int(v) for v in exp.layer_shape]
    return rows


def _rows_bytes(x: torch.Tensor) -> list[bytes]:
    """One float16 bytes value per row of ``x`` (row-major)."""
    a = np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float16))
    return [r.tobytes() for r in a.reshape(len(a), -1)]


def method_column(name: str, method: str) -> str:
    """The samples-table column of metric column ``name`` under ``method`` (not the first)."""
    return f"{name}@{method}"


def _saliency(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) >= 0: a CAM map as it is; a guided method's signed (N, C, H, W) input
    gradient as its absolute value summed over channels."""
    maps = maps.detach().float().cpu()
    return maps.abs().sum(dim=1) if maps.ndim == 4 else maps


def _role_masks(masks, present, regions, roles) -> torch.Tensor:
    """(N, 3, H, W) bool: the masks of ``ROLES`` in order; an absent role is empty, so its
    occlusion is skipped and its effects are NaN."""

    by_name, here = role_masks(masks, present, regions, roles)
    return torch.stack([by_name[r] & here[r][:, None, None] for r in ROLES], dim=1)


def _region_masks(masks, present, regions, names) -> torch.Tensor:
    """(N, len(names), H, W) bool: each named region's mask, empty where it is absent (so its
    occlusion is skipped and its effects are NaN)."""
    index = {r: i for i, r in enumerate(regions)}
    return torch.stack([masks[:, index[r]] & present[:, index[r], None, None] for r in names], 1)
