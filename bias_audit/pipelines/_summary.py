"""summary.json: the run's provenance, scope, per-model facts and findings."""

from __future__ import annotations

import datetime as _dt
import math
import platform
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchvision

from bias_audit.core._malloc import malloc_setting
from bias_audit.core._version import VERSION


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _pooled(groups: pd.DataFrame, model: str, metric: str) -> float:
    """The ``all`` cell's value of ``metric`` in the groups table (NaN without one)."""
    hit = groups[
        (groups["model"] == model) & (groups["cell"] == "all") & (groups["metric"] == metric)
    ]
    return float(hit["value"].iloc[0]) if len(hit) else math.nan


def _summary(
    config, ds, plans, layers, samples, tables, findings, nan_maps, dev, *, judged, timings
) -> dict:
    """``judged`` (verdicts, scoreboard, changes, warnings) leads: the answer comes first."""

    cells = ds.cells()
    models = []
    worst = {r["model"]: r for r in tables["worst_group"].to_dict("records")}
    for p in plans:
        name = p.cfg.name
        w = worst.get(name, {})
        models.append({
            "name": name, "arch": p.arch, "checkpoint": str(p.cfg.checkpoint), "sha256": p.sha256,
            "classes": list(p.classes or ds.classes),
            "target_layer": layers.get(name, {}).get("target_layer"),
            "target_layer_from": p.target_layer_from,
            "layer_shape": layers.get(name, {}).get("layer_shape"),
            "image_size": p.image_size,
            "image_size_from": p.image_size_from,
            "n": int((samples["model"] == name).sum()),
            "accuracy": _pooled(tables["groups"], name, "accuracy"),
            "nan_maps": nan_maps.get(name, 0),
            # the worst_group.parquet row: cell, its n, accuracy and Wilson interval
            "worst_group": (
                {k: w[k] for k in ("cell", "n", "value", "ci_low", "ci_high", "overall")}
                if w.get("n_cells") else None
            ),
        })  # fmt: skip
    return {
        "verdicts": judged["verdicts"],
        "scoreboard": judged["scoreboard"],
        "changes": judged["changes"],
        "warnings": judged["warnings"],
        "methods": list(config.explain.methods),
        "gate": config.gate.to_dict(),
        "title": config.title,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "config": config.to_toml(),
        "data": {
            "manifest": str(config.data.manifest),
            "n": len(ds),
            "fingerprint": ds.fingerprint(),
            "groups": list(config.data.groups),
            "label": config.data.label,
            "classes": list(ds.classes),
            "regions": list(ds.regions),
            "roles": {
                "causal": list(config.regions.causal),
                "confounder": list(config.regions.confounder),
            },  # fmt: skip
            "cells": cells.to_dict("records"),
            "skipped": int(len(ds.skipped)),
        },
        "models": models,
        "explain": {"methods": list(config.explain.methods), "target": config.explain.target},
        "interventions": {
            "enabled": config.interventions.enabled,
            "fill": config.interventions.fill,
            "baseline": config.interventions.baseline,
        },  # fmt: skip
        "stats": {
            "min_group_size": config.stats.min_group_size,
            "bootstrap": config.stats.bootstrap,
            "permutations": config.stats.permutations,
            "seed": config.stats.seed,
        },
        "findings": findings,
        "provenance": {
            "bias_audit": VERSION,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "seed": config.stats.seed,
            "device": str(dev),
            "malloc": malloc_setting(),
        },  # fmt: skip
        "timings": timings,
    }
