"""The run loop: config in, run folder out.

For each model the dataset streams through a DataLoader in fixed batches; each batch goes
through the pure :func:`audit_batch` and its rows are stored at once, so memory stays flat and
a killed run resumes at the first missing batch. Then come the statistics over the whole
samples table, one Holm correction over every p-value of the audit, the findings, the gallery
and the report.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bias_audit.core._device import resolve_device
from bias_audit.core.config import AuditConfig
from bias_audit.core.findings import (
    FindingInputs,
    draft_findings,
    model_changes,
    settle_findings,
)
from bias_audit.core.verdicts import scoreboard, verdicts, with_trust_caveats
from bias_audit.errors import RunError
from bias_audit.io.run_folder import RunStore, read_summary, read_table
from bias_audit.pipelines._discovery import annotation_warnings, discover
from bias_audit.pipelines._gallery import _gallery
from bias_audit.pipelines._plan import (
    _batches,
    _check_budget,
    _check_regions,
    _Datasets,
    _final_layer,
    _load,
    _Plan,
    _plan,
    _settle_sizes,
    _spec,
)
from bias_audit.pipelines._statistics import (
    STAT_TABLES,
    _holm_all,
    _statistics,
)
from bias_audit.pipelines._step import DISCOVERY_FEATURES, DISCOVERY_MAP, MAP_OK
from bias_audit.pipelines._stream import _skipped, _stream
from bias_audit.pipelines._summary import _summary
from bias_audit.pipelines._trust import run_trust

__all__ = ["audit", "AuditResult"]


@dataclass(frozen=True, kw_only=True)
class AuditResult:
    """What one audit produced; everything is also in ``run_dir``.

    Attributes:
        run_dir: the run folder.
        samples: one row per model x image (columns: docs/design.md, plus ``map_ok``).
        groups: ``group_stats`` (tidy), gaps: ``group_gaps``, fairness: DP/EO differences,
            comparisons: paired model comparisons (``p_value`` and Holm ``p_adjusted``).
        findings: dicts with rule, severity, model, cell, metric, value, ci_low, ci_high,
            p_value, p_adjusted, text (NaN where a number does not apply).
        summary: the content of ``summary.json``; it leads with ``verdicts`` (one per model:
            status pass / concern / fail from the ``[gate]``), ``scoreboard``, ``changes``
            between models and ``warnings``.
    """

    run_dir: Path
    samples: pd.DataFrame
    groups: pd.DataFrame = field(default_factory=pd.DataFrame)
    gaps: pd.DataFrame = field(default_factory=pd.DataFrame)
    fairness: pd.DataFrame = field(default_factory=pd.DataFrame)
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    findings: tuple[dict[str, Any], ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: str | Path) -> AuditResult:
        """Read a finished run folder back. Raises RunError naming a missing or broken file."""
        run_dir = Path(run_dir)
        summary = read_summary(run_dir)

        def table(name: str) -> pd.DataFrame:
            p = run_dir / name
            return read_table(p) if p.exists() else pd.DataFrame()

        return cls(
            run_dir=run_dir,
            samples=read_table(run_dir / "samples.parquet"),
            groups=table("groups.parquet"),
            gaps=table("gaps.parquet"),
            fairness=table("fairness.parquet"),
            comparisons=table("comparisons.parquet"),
            findings=tuple(_nan_from_none(f) for f in summary.get("findings", [])),
            summary=summary,
        )


def _engine(config: AuditConfig) -> Any:
    """The Ray session for ``engine = "ray"``, else a no-op context.

    The Ray engine is imported only here and only then: it needs the optional extra, and
    ``import bias_audit`` must not import ray.
    """
    if config.run.engine != "ray":
        return contextlib.nullcontext()
    from bias_audit.pipelines._ray_engine import RayEngine

    return RayEngine(config.run)


def _nan_from_none(d: dict[str, Any]) -> dict[str, Any]:
    nums = ("value", "ci_low", "ci_high", "p_value", "p_adjusted")
    return {k: (math.nan if k in nums and v is None else v) for k, v in d.items()}


def audit(
    config: AuditConfig | str | Path,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> AuditResult:
    """Run an audit: every model over the dataset, then statistics, findings and the report.

    Args:
        config: an :class:`AuditConfig`, or the path of its TOML file.
        out: the run folder (default: ``config.run_dir()``).
        resume: continue an interrupted run in ``out`` from its last completed batch; refused
            when the config, the data, the batch size or a checkpoint changed.
        force: overwrite the run files in an existing ``out``.
        device: "cpu" (default), "cuda", "cuda:N" or "auto".
        progress: show progress bars (the CLI turns them on only on a terminal).

    Returns:
        An :class:`AuditResult`, also written to the run folder.

    Raises:
        ConfigError, DataError, ModelError: bad input, naming the culprit.
        RunError: an existing run folder without ``force``, or a resume that does not match.
    """
    if not isinstance(config, AuditConfig):
        config = AuditConfig.from_toml(config)
    t0 = time.perf_counter()

    dev = resolve_device(device)
    engine = _engine(config)  # before the run folder is touched: a missing extra changes nothing
    run_dir = config.run_dir(out)
    datasets = _Datasets(config)
    plans, warnings = _settle_sizes(config, [_plan(config, m) for m in config.models], datasets)
    first_ds = datasets.get(plans[0])
    _check_regions(config, first_ds.regions)
    if len(first_ds) == 0:
        raise RunError(f"{config.data.manifest}: no usable rows ({first_ds.skip_summary()})")
    key = {
        "config_hash": config.samples_hash(),
        "fingerprint": first_ds.fingerprint(),
        "batch_size": config.data.batch_size,
        "models": {p.cfg.name: p.sha256 for p in plans},
    }
    store = RunStore(run_dir)
    resumed = store.open(key, resume=resume, force=force)
    # The folder stays locked until the run ends, also on error: no second run can mix in.
    with store, engine:
        # Also on resume: a title or report edit is allowed then, and the folder shows the
        # config used.
        store.write_text("config.toml", config.to_toml())
        torch.manual_seed(config.stats.seed)

        per_model_s: dict[str, float] = dict(store.info("per_model_s", {}) or {})
        layers: dict[str, dict[str, Any]] = dict(store.info("layers", {}) or {})
        batch_ids_of: dict[str, list[list[str]]] = {}
        loaded: dict[str, tuple[torch.nn.Module, Any, _Plan]] = {}
        finals: dict[str, tuple[str, str | None]] = {}
        for plan in plans:
            name = plan.cfg.name
            ds = datasets.get(plan)
            batches = _batches(len(ds), config.data.batch_size)
            ids = ds.ids
            batch_ids = batch_ids_of[name] = [[ids[i] for i in batch] for batch in batches]
            # Only parts that pass their checksum and hold their batch's ids count as done.
            done = store.verify(name, batch_ids)
            pending = [b for b in range(len(batches)) if b not in done]
            model = _load(plan, ds, dev)
            loaded[name] = (model, ds, plan)
            finals[name] = (_final_layer(model, ds, dev), plan.target_layer)
            if pending:
                t_model = time.perf_counter()
                spec = _spec(config, plan, ds)
                _check_budget(model, ds, spec, config, dev, progress)
                # -- engine dispatch: both engines write the same parts
                if config.run.engine == "ray":
                    engine.queue(plan, ds, batches, pending, spec)  # run below, one actor pool
                    continue
                layer = _stream(model, ds, batches, pending, spec, store, config, dev, progress)
                if layer:
                    layers[name] = layer
                per_model_s[name] = per_model_s.get(name, 0.0) + time.perf_counter() - t_model
                store.set_info(per_model_s=per_model_s, layers=layers)
        # -- engine dispatch: every model's pending batches through one actor pool, so each
        # actor loads each model once; per_model_s is then the actors' compute time.
        if config.run.engine == "ray":
            ray_layers, ray_seconds = engine.run(store, progress)
            layers.update(ray_layers)
            for name, seconds in ray_seconds.items():
                per_model_s[name] = per_model_s.get(name, 0.0) + seconds
            store.set_info(per_model_s=per_model_s, layers=layers)
        frames = [store.collect(p.cfg.name, batch_ids_of[p.cfg.name]) for p in plans]
        for plan in plans:
            name = plan.cfg.name
            final, planned = finals[name]
            used = layers.get(name, {}).get("target_layer") or planned
            if used is not None and used != final:
                warnings.append({
                    "code": "non_final_layer", "model": name,
                    "text": (f"{name}: maps are taken at layer {used!r} (from the "
                             f"{plan.target_layer_from}), not at the last spatial layer "
                             f"{final!r}; an earlier layer can miss or invent a shortcut"),
                })  # fmt: skip
        samples = pd.concat(frames, ignore_index=True)
        # discovery's inputs rode in the parts; they are not samples-table columns
        inputs = [c for c in (DISCOVERY_MAP, DISCOVERY_FEATURES) if c in samples]
        collected = samples[["model", "id", "pred", *inputs]]
        samples = samples.drop(columns=inputs)
        # -- discovery: clusters per predicted class, the samples' cluster columns
        t_discovery = time.perf_counter()
        discovered: tuple[list, list] = ([], [])
        if config.discovery.enabled:
            *discovered, clusters = discover(config, loaded, samples, collected, store, dev, layers)
            samples = samples.merge(clusters, on=["model", "id"], how="left")
        del collected
        discovery_s = time.perf_counter() - t_discovery
        # -- end discovery
        store.write_table("samples.parquet", samples)
        store.write_table("skipped.parquet", _skipped(first_ds))

        t_stats = time.perf_counter()
        tables = _statistics(samples, config, first_ds.regions)
        map_counts = {}
        for p in plans:
            ok = samples.loc[samples["model"] == p.cfg.name, MAP_OK]
            map_counts[p.cfg.name] = (int((~ok).sum()), int(len(ok)))
        nan_maps = {name: bad for name, (bad, _) in map_counts.items()}
        drafts = draft_findings(
            FindingInputs(
                samples=samples, groups=tables["groups"], worst=tables["worst_group"],
                gaps=tables["gaps"], comparisons=tables["comparisons"],
                roles={"causal": config.regions.causal, "confounder": config.regions.confounder},
                min_group_size=config.stats.min_group_size, map_counts=map_counts,
            )
        )  # fmt: skip
        drafts = _holm_all(tables, drafts)
        findings = [f.to_dict() for f in settle_findings(drafts)]
        names = [p.cfg.name for p in plans]
        judged = {
            "verdicts": verdicts(
                tables["groups"], tables["worst_group"], names, config.gate.to_dict(),
                findings=findings, warnings=warnings, confounders=config.regions.confounder,
            ),
            "scoreboard": scoreboard(
                tables["groups"], tables["worst_group"], names, findings=findings
            ),
            "changes": model_changes(tables["comparisons"]),
            "warnings": [{"code": w["code"], "text": w["text"]} for w in warnings],
        }  # fmt: skip
        for name in STAT_TABLES:
            store.write_table(f"{name}.parquet", tables[name])
        stats_s = time.perf_counter() - t_stats

        t_gallery = time.perf_counter()
        if config.report.gallery_per_cell > 0:
            _gallery(samples, config, loaded, store, dev, layers)
        gallery_s = time.perf_counter() - t_gallery

        summary = _summary(
            config, first_ds, plans, layers, samples, tables, findings, nan_maps, dev,
            judged=judged,
            timings={
                "total_s": time.perf_counter() - t0,
                "per_model_s": per_model_s,
                "stats_s": stats_s,
                "gallery_s": gallery_s,
                "discovery_s": discovery_s,
                "resumed": resumed,
            },
        )  # fmt: skip
        summary["trust"] = run_trust(config, loaded, store, dev, layers)
        summary["verdicts"] = with_trust_caveats(
            summary["verdicts"], summary["trust"].get("findings", ())
        )
        # -- discovery, and which sections need region annotations
        summary["discovery"], summary["error_slices"] = discovered
        summary.setdefault("warnings", []).extend(annotation_warnings(config, first_ds.regions))
        store.write_json("summary.json", summary)
        store.finish()
        return AuditResult(
            run_dir=run_dir, samples=samples, groups=tables["groups"], gaps=tables["gaps"],
            fairness=tables["fairness"], comparisons=tables["comparisons"],
            findings=tuple(findings), summary=summary,
        )  # fmt: skip
