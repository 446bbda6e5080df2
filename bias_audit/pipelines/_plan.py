"""The audit's plan: what each model needs (checkpoint, architecture, transform, target layer)
before any image streams."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bias_audit.core.config import AuditConfig, ModelConfig
from bias_audit.errors import ConfigError
from bias_audit.io.checkpoints import checkpoint_arch, load_model, read_metadata
from bias_audit.io.data import IMAGENET_MEAN, IMAGENET_STD, load_manifest
from bias_audit.pipelines._step import StepSpec


@dataclass(frozen=True)
class _Plan:
    """A model as it will be run: its config plus what its checkpoint says."""

    cfg: ModelConfig
    arch: str | None
    classes: tuple[str, ...] | None
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sha256: str
    target_layer: str | None = None
    # where target_layer came from: "config", "checkpoint" (the layer training penalised) or
    # "automatic" (explain's resolver picks it on the first batch)
    target_layer_from: str = "automatic"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _plan(config: AuditConfig, m: ModelConfig) -> _Plan:

    meta = read_metadata(m.checkpoint)
    classes = m.classes or (meta.classes if meta else None) or config.data.classes
    layer, layer_from = m.target_layer or config.explain.target_layer, "config"
    if layer is None and meta is not None and meta.target_layer is not None:
        layer, layer_from = meta.target_layer, "checkpoint"
    return _Plan(
        cfg=m,
        arch=m.arch
        or (
            checkpoint_arch(meta, where=f"models.{m.name}.checkpoint {str(m.checkpoint)!r}")
            if meta
            else None
        ),
        classes=tuple(classes) if classes else None,
        image_size=m.image_size or (meta.image_size if meta else config.data.image_size),
        mean=tuple(meta.mean) if meta else tuple(IMAGENET_MEAN),
        std=tuple(meta.std) if meta else tuple(IMAGENET_STD),
        sha256=_sha256(m.checkpoint),
        target_layer=layer,
        target_layer_from=layer_from if layer is not None else "automatic",
    )


class _Datasets:
    """One dataset per distinct transform; models that share a transform share a dataset."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self._cache: dict[tuple, Any] = {}

    def get(self, plan: _Plan):

        d = self.config.data
        key = (plan.classes, plan.image_size, plan.mean, plan.std)
        if key not in self._cache:
            self._cache[key] = load_manifest(
                d.manifest, label=d.label, groups=d.groups, classes=plan.classes,
                image_size=plan.image_size, resize=d.resize, mean=plan.mean, std=plan.std,
                on_error=d.on_error, min_group_size=self.config.stats.min_group_size,
            )  # fmt: skip
        return self._cache[key]


def _check_regions(config: AuditConfig, regions: Sequence[str]) -> None:
    for role in ("causal", "confounder"):
        for name in getattr(config.regions, role):
            if name not in regions:
                raise ConfigError(
                    f"{config.source}: [regions] {role}: region {name!r} is not in the "
                    f"manifest {config.data.manifest.name} (its regions: {list(regions)})"
                )
    unknown = [name for name in config.interventions.regions if name not in regions]
    if unknown:
        raise ConfigError(
            f"{config.source}: [interventions] regions: {unknown} not in the manifest "
            f"{config.data.manifest.name} (its regions: {list(regions)})"
        )


def _batches(n: int, size: int) -> list[list[int]]:
    return [list(range(s, min(s + size, n))) for s in range(0, n, size)]


def _load(plan: _Plan, ds, dev: torch.device) -> torch.nn.Module:
    return load_model(
        plan.arch, checkpoint=plan.cfg.checkpoint, classes=plan.classes or tuple(ds.classes),
        device=dev,
    )  # fmt: skip


def _spec(config: AuditConfig, plan: _Plan, ds) -> StepSpec:
    return StepSpec(
        model=plan.cfg.name,
        classes=tuple(ds.classes),
        # Only the first method feeds the samples table; the others are computed for the
        # gallery's selection alone, so they cost nothing per image of the dataset.
        methods=config.explain.methods[:1],
        target=config.explain.target,
        target_layer=plan.target_layer,
        roles={"causal": config.regions.causal, "confounder": config.regions.confounder},
        groups=config.data.groups,
        interventions=config.interventions.enabled,
        fill=config.interventions.fill,
        baseline=config.interventions.baseline,
        occlude_regions=config.interventions.regions,
        seed=config.stats.seed,
    )
