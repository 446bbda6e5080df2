"""The trust phase: after streaming, check per model that its maps deserve trust.

Each model is checked on the same seeded sample of ``[trust] sample`` images (so the cost
follows the sample, not the dataset): model-parameter randomisation, layer and method
sensitivity, faithfulness (:mod:`bias_audit.core.trust`). The results go to ``trust.parquet``
(one row per check x model x method x step, layer or fraction) and ``trust.json`` (the same
as ``summary.json``'s ``trust`` key).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from bias_audit.core.config import GUIDED, AuditConfig
from bias_audit.core.trust import (
    explain_sample,
    faithfulness,
    layer_sensitivity,
    model_randomization,
    trust_findings,
)
from bias_audit.errors import ModelError
from bias_audit.io.data import Batch, collate
from bias_audit.io.run_folder import RunStore

__all__ = ["run_trust", "trust_sample", "state_sha256"]


def state_sha256(model: nn.Module) -> str:
    """Hash of every parameter and buffer, bit for bit: the audited model must keep it."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def trust_sample(ds: Any, size: int, *, seed: int) -> Batch:
    """``min(size, len(ds))`` images drawn without replacement (seeded), in dataset order."""
    n = min(size, len(ds))
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return collate([ds[int(i)] for i in idx])


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    # to_json turns NaN into null and numpy scalars into plain numbers.
    return json.loads(frame.to_json(orient="records"))


def run_trust(
    config: AuditConfig,
    loaded: dict[str, tuple[nn.Module, Any, Any]],
    store: RunStore,
    dev: torch.device,
    layers: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Run the checks for every model, write ``trust.parquet`` and ``trust.json``.

    Returns:
        ``summary.json``'s ``trust`` value: settings, per-model tables (as records) and
        ``findings`` (a list of {code, model, method, text, severity}); ``{"enabled": False}``
        when ``[trust] enabled = false``.
    """
    cfg = config.trust
    if not cfg.enabled:
        return {"enabled": False}
    t0 = time.perf_counter()
    methods = tuple(m for m in (cfg.methods or config.explain.methods) if m not in GUIDED)
    seed, n_boot = config.stats.seed, config.stats.bootstrap
    roles = {"causal": config.regions.causal, "confounder": config.regions.confounder}
    frames: list[pd.DataFrame] = []
    per_model: dict[str, Any] = {}
    findings: list[dict[str, str]] = []
    for name, (model, ds, plan) in loaded.items():
        t_model = time.perf_counter()
        batch = trust_sample(ds, cfg.sample, seed=seed)
        images = batch.images.to(dev)
        targets = batch.labels.to(dev) if config.explain.target == "label" else None
        layer = layers.get(name, {}).get("target_layer") or plan.target_layer
        before = state_sha256(model)
        bs = config.data.batch_size
        # One explain pass of the audited model serves the three checks: the layer check's
        # multi-layer pass when it runs (its target-layer maps), else a pass of its own.
        rand = lay = faith = None
        if roles["causal"] or roles["confounder"]:
            lay = layer_sensitivity(
                model, images, batch.masks, batch.present, batch.regions, roles,
                methods=methods, target_layer=layer, layers=cfg.layers or None,
                count=cfg.layers_before, targets=targets, seed=seed, n_boot=n_boot,
                batch_size=bs,
            )  # fmt: skip
        if lay is not None and lay.explained is not None:
            explained = lay.explained
        else:
            explained = explain_sample(model, images, methods, layer, targets, bs)
        layer = explained.target_layer
        if cfg.randomization:
            rand = model_randomization(
                model, images, methods=methods, target_layer=layer, targets=targets,
                steps=cfg.steps, seed=seed, n_boot=n_boot, explained=explained, batch_size=bs,
                draws=cfg.draws,
            )  # fmt: skip
        if cfg.faithfulness:
            faith = faithfulness(
                model, images, methods=methods, target_layer=layer, targets=targets,
                fractions=cfg.fractions, fill=config.interventions.fill, seed=seed,
                n_boot=n_boot, explained=explained, batch_size=bs,
            )  # fmt: skip
        for check, res in (("randomization", rand), ("layers", lay), ("faithfulness", faith)):
            if res is not None:
                frames.append(res.table.assign(check=check, model=name))
        if state_sha256(model) != before:  # a bug here, never the user's input
            raise ModelError(f"model {name!r}: the trust checks changed the audited model")
        found = trust_findings(
            name, randomization=rand, layers=lay, faith=faith, max_spearman=cfg.max_spearman
        )
        findings.extend(f.to_dict() for f in found)
        per_model[name] = {
            "n": len(batch),
            "target_layer": layer,
            "state_sha256": before,
            "randomization": _records(rand.table) if rand is not None else [],
            "layers": _records(lay.table) if lay is not None else [],
            "faithfulness": _records(faith.table) if faith is not None else [],
            "passed": not found,
            "seconds": time.perf_counter() - t_model,
        }
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"check": []})
    first = ["check", "model", "method"]
    table = table[first + [c for c in table.columns if c not in first]]
    if "is_target" in table:
        table["is_target"] = table["is_target"].astype("boolean")
    for col in ("step", "n", "n_valid", "draws"):
        if col in table:
            table[col] = table[col].astype("Int64")
    store.write_table("trust.parquet", table)
    out = {
        "enabled": True,
        "sample": cfg.sample,
        "seed": seed,
        "methods": list(methods),
        "max_spearman": cfg.max_spearman,
        "draws": cfg.draws,
        "fractions": list(cfg.fractions),
        "fill": config.interventions.fill,
        "models": per_model,
        "findings": findings,
        "seconds": time.perf_counter() - t0,
    }
    store.write_json("trust.json", out)
    return out
