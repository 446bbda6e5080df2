"""The run loop: config in, run folder out.

For each model the dataset streams through a DataLoader in fixed batches; each batch goes
through the pure :func:`audit_batch` and its rows are stored at once, so memory stays flat and
a killed run resumes at the first missing batch. Then come the statistics over the whole
samples table, one Holm correction over every p-value of the audit, the findings, the gallery
and the report.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bias_audit.core._device import resolve_device
from bias_audit.core._naming import CONFOUNDER, ROLES, cell_name, column
from bias_audit.core.config import AuditConfig, ModelConfig
from bias_audit.core.findings import Finding, FindingInputs, draft_findings, settle_findings
from bias_audit.core.stats import (
    cell_quantiles,
    class_rates,
    fairness_differences,
    group_gaps,
    group_stats,
    holm,
    paired_comparison,
    worst_group,
)
from bias_audit.errors import ConfigError, RunError
from bias_audit.io.run_folder import RunStore, read_summary, read_table
from bias_audit.pipelines._step import MAP_OK, StepSpec, batch_rows, explain_batch

__all__ = ["audit", "AuditResult"]

#: Longest side of the gallery's thumbnails, maps and masks.
GALLERY_SIZE = 96


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
        summary: the content of ``summary.json``.
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


def _nan_from_none(d: dict[str, Any]) -> dict[str, Any]:
    nums = ("value", "ci_low", "ci_high", "p_value", "p_adjusted")
    return {k: (math.nan if k in nums and v is None else v) for k, v in d.items()}


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
    from bias_audit.io.checkpoints import checkpoint_arch, read_metadata
    from bias_audit.io.data import IMAGENET_MEAN, IMAGENET_STD

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
        from bias_audit.io.data import load_manifest

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


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, file=sys.stderr)


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
    run_dir = config.run_dir(out)
    plans = [_plan(config, m) for m in config.models]
    datasets = _Datasets(config)
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
    with store:
        # Also on resume: a title or report edit is allowed then, and the folder shows the
        # config used.
        store.write_text("config.toml", config.to_toml())
        torch.manual_seed(config.stats.seed)

        per_model_s: dict[str, float] = dict(store.info("per_model_s", {}) or {})
        layers: dict[str, dict[str, Any]] = dict(store.info("layers", {}) or {})
        frames = []
        loaded: dict[str, tuple[torch.nn.Module, Any, _Plan]] = {}
        for plan in plans:
            name = plan.cfg.name
            ds = datasets.get(plan)
            batches = _batches(len(ds), config.data.batch_size)
            ids = ds.ids
            batch_ids = [[ids[i] for i in batch] for batch in batches]
            # Only parts that pass their checksum and hold their batch's ids count as done.
            done = store.verify(name, batch_ids)
            pending = [b for b in range(len(batches)) if b not in done]
            model = _load(plan, ds, dev)
            loaded[name] = (model, ds, plan)
            if pending:
                t_model = time.perf_counter()
                spec = _spec(config, plan, ds)
                layer = _stream(model, ds, batches, pending, spec, store, config, dev, progress)
                if layer:
                    layers[name] = layer
                per_model_s[name] = per_model_s.get(name, 0.0) + time.perf_counter() - t_model
                store.set_info(per_model_s=per_model_s, layers=layers)
            frames.append(store.collect(name, batch_ids))
        samples = pd.concat(frames, ignore_index=True)
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
        for name in STAT_TABLES:
            store.write_table(f"{name}.parquet", tables[name])
        stats_s = time.perf_counter() - t_stats

        t_gallery = time.perf_counter()
        if config.report.gallery_per_cell > 0:
            _gallery(samples, config, loaded, store, dev, layers)
        gallery_s = time.perf_counter() - t_gallery

        summary = _summary(
            config, first_ds, plans, layers, samples, tables, findings, nan_maps, dev,
            timings={
                "total_s": time.perf_counter() - t0,
                "per_model_s": per_model_s,
                "stats_s": stats_s,
                "gallery_s": gallery_s,
                "resumed": resumed,
            },
        )  # fmt: skip
        store.write_json("summary.json", summary)
        store.finish()
        return AuditResult(
            run_dir=run_dir, samples=samples, groups=tables["groups"], gaps=tables["gaps"],
            fairness=tables["fairness"], comparisons=tables["comparisons"],
            findings=tuple(findings), summary=summary,
        )  # fmt: skip


def _load(plan: _Plan, ds, dev: torch.device) -> torch.nn.Module:
    from bias_audit.io.checkpoints import load_model

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


def _stream(model, ds, batches, pending, spec, store, config, dev, progress) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from torch.utils.data import DataLoader

    from bias_audit.io.data import collate

    loader = DataLoader(
        ds, batch_sampler=[batches[b] for b in pending], collate_fn=collate,
        num_workers=config.data.num_workers, persistent_workers=False,
    )  # fmt: skip
    bar = _progress_bar(sum(len(batches[b]) for b in pending), spec.model, progress)
    layer: dict[str, Any] = {}
    # Without worker processes, a thread decodes the next batches while this one is explained
    # (PIL and torch release the GIL), so loading costs little wall time.
    source = _Prefetch(loader) if config.data.num_workers == 0 else loader
    # Without interventions the table half of the step never touches the model, so a second
    # thread measures and stores batch k while batch k+1 is explained. Parts are still written
    # one at a time and in order; an interrupt waits for the part being written.
    pool = None if spec.interventions else ThreadPoolExecutor(max_workers=1)
    previous = None

    def finish(b: int, batch, exp, spec: StepSpec) -> dict[str, Any]:
        rows = batch_rows(model, batch, exp, spec=spec)
        store.write_part(spec.model, b, rows)
        if bar is not None:
            bar.update(len(batch))
        return {"target_layer": exp.target_layer, "layer_shape": list(rows.attrs["layer_shape"])}

    try:
        for b, batch in zip(pending, source, strict=True):
            exp = explain_batch(model, batch, spec=spec)
            if spec.target_layer is None:
                # Resolve the automatic layer once: explain would probe the model every batch.
                spec = dataclasses.replace(spec, target_layer=exp.target_layer)
            if pool is None:
                layer = finish(b, batch, exp, spec)
                continue
            if previous is not None:
                layer = previous.result()
            previous = pool.submit(finish, b, batch, exp, spec)
        if previous is not None:
            layer = previous.result()
            previous = None
    finally:
        if pool is not None:
            pool.shutdown(wait=True)  # an explained batch is still stored
        if isinstance(source, _Prefetch):
            source.close()
        if bar is not None:
            bar.close()
    return layer


class _Prefetch:
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead.

    Errors of the iterable are re-raised in the consumer; :meth:`close` stops the thread (also
    after Ctrl-C in the consumer), so no thread outlives the run.
    """

    _END = object()

    def __init__(self, iterable, depth: int = 2) -> None:
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iterable,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, iterable) -> None:
        try:
            for item in iterable:
                if not self._put(item):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put(_Failed(err))
            return
        self._put(self._END)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def close(self) -> None:
        import queue

        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def _skipped(ds) -> pd.DataFrame:
    skipped = ds.skipped
    if skipped is None or len(skipped) == 0:
        return pd.DataFrame({"row": pd.Series(dtype="int64"), "column": pd.Series(dtype=str),
                             "reason": pd.Series(dtype=str)})  # fmt: skip
    return skipped.astype({"column": str, "reason": str})


#: Per-region occlusion columns summarised per cell when ``[interventions] regions`` asks for them.
OCCLUSION_METRICS = ("flip", "drop", "flip_random")
#: Sample columns summarised per cell (when present); per-region masses and occlusion are added.
STAT_METRICS = (
    *(column("mass", r) for r in ROLES),
    column("lift", CONFOUNDER),
    # the confounder regions' share of the image, for the lift a finding states
    column("area", CONFOUNDER),
    column("pointing", "causal"),
    column("pointing", CONFOUNDER),
    *(column(k, r) for k in OCCLUSION_METRICS for r in ("causal", CONFOUNDER)),
)
#: Sample columns whose per-cell distribution (quartiles, whiskers) the report draws.
DISTRIBUTION_METRICS = (column("mass", CONFOUNDER),)
#: Tables of the statistics step, each written as ``<name>.parquet``.
STAT_TABLES = ("groups", "gaps", "fairness", "comparisons", "worst_group", "rates", "distributions")
#: Sample columns tested for gaps between cells and for differences between models.
TESTED_METRICS = (column("mass", CONFOUNDER), column("mass", "causal"), column("flip", CONFOUNDER))


def _statistics(samples: pd.DataFrame, config: AuditConfig, regions) -> dict[str, pd.DataFrame]:
    """Group statistics, worst groups, class rates, distributions, gaps, fairness differences
    and paired comparisons (raw p-values): every number the findings and the report show."""
    from itertools import combinations

    st, groups = config.stats, list(config.data.groups)
    have = set(samples.columns)
    per_region = [column(k, r) for r in regions for k in ("mass", *OCCLUSION_METRICS)]
    summarised = [m for m in (*STAT_METRICS, *per_region) if m in have]
    tested = [m for m in TESTED_METRICS if m in have]
    classes = sorted(set(samples["label"]) | set(samples["pred"]))
    common = {"groups": groups, "min_group_size": st.min_group_size, "seed": st.seed}
    tables = {
        "groups": group_stats(
            samples, metrics=summarised, classes=classes, n_boot=st.bootstrap, **common
        ),  # fmt: skip
        "gaps": group_gaps(samples, metrics=tested, n_perm=max(1, st.permutations), **common),
        "fairness": fairness_differences(samples, groups=groups, classes=classes),
        "rates": class_rates(samples, groups=groups, classes=classes),
        "distributions": cell_quantiles(
            samples, groups=groups, metrics=[m for m in DISTRIBUTION_METRICS if m in have]
        ),
    }
    tables["worst_group"] = worst_group(tables["groups"])
    models = list(dict.fromkeys(samples["model"]))
    pairs = [
        paired_comparison(
            samples, a, b, metrics=["accuracy", *tested], n_boot=st.bootstrap, **common
        )  # fmt: skip
        for a, b in combinations(models, 2)
    ]
    tables["comparisons"] = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(
        columns=["model_a", "model_b", "cell", "metric", "n", "small", "mean_diff", "ci_low",
                 "ci_high", "p_value", "share_expected_sign"])  # fmt: skip
    return tables


def _holm_all(tables: dict[str, pd.DataFrame], drafts: list[Finding]) -> list[Finding]:
    """One Holm correction over every p-value of the audit: gaps, comparisons and findings.

    Adds ``p_adjusted`` to the tables in place and returns the drafts with theirs."""
    drafts = list(drafts)
    pieces: list[tuple[str, int | None, float]] = []
    for name in ("gaps", "comparisons", "fairness"):
        t = tables[name]
        if "p_value" in t.columns:
            pieces.extend((name, i, float(p)) for i, p in enumerate(t["p_value"]))
    own = [i for i, d in enumerate(drafts) if d.source is None]
    pieces.extend(("draft", i, float(drafts[i].p_value)) for i in own)
    p = np.array([x[2] for x in pieces], dtype=float)
    adj = np.asarray(holm(p), dtype=float)
    for name in ("gaps", "comparisons", "fairness"):
        if "p_value" in tables[name].columns:
            tables[name] = tables[name].assign(p_adjusted=np.nan)
    for (name, i, _), a in zip(pieces, adj, strict=True):
        if name == "draft":
            drafts[i] = dataclasses.replace(drafts[i], p_adjusted=float(a))
        else:
            tables[name].iloc[i, tables[name].columns.get_loc("p_adjusted")] = a
    # Findings that restate a gap or a comparison take that row's adjusted p-value.
    for i, d in enumerate(drafts):
        if d.source is not None:
            table, row = d.source
            drafts[i] = dataclasses.replace(
                d, p_adjusted=float(tables[table]["p_adjusted"].iloc[row])
            )
    return drafts


def _cells(samples: pd.DataFrame, groups: Sequence[str]) -> pd.Series:
    keys = [*groups, "label"]
    return samples[keys].astype(str).apply(lambda r: cell_name(r.tolist()), axis=1)


def _gallery(samples, config, loaded, store, dev, layers) -> None:
    """Maps of a bounded, deterministic selection per cell, for the report's gallery.

    Per cell (of the first model's rows): the ``ceil(k/2)`` most confounder-reliant images by
    ``mass:confounder``, then a seeded random draw among the rest, ``k = gallery_per_cell``.
    """
    from bias_audit.core.maps import explain

    first = config.models[0].name
    rows = samples[samples["model"] == first].reset_index(drop=True)
    rows = rows.assign(_cell=_cells(rows, config.data.groups).to_numpy(), _pos=np.arange(len(rows)))
    k = config.report.gallery_per_cell
    rng = np.random.default_rng(config.stats.seed)
    conf = column("mass", CONFOUNDER)
    picks: list[tuple[str, int, str]] = []
    for cell, sub in rows.groupby("_cell", sort=True):
        ranked = sub[sub[conf].notna()] if conf in sub else sub.iloc[:0]
        top = ranked.sort_values([conf, "id"], ascending=[False, True]).head(math.ceil(k / 2))
        rest = sub[~sub["_pos"].isin(top["_pos"])].sort_values("id")
        n_rand = min(k - len(top), len(rest))
        rand = rest.iloc[np.sort(rng.choice(len(rest), size=n_rand, replace=False))]
        picks += [(cell, int(p), "confounder") for p in top["_pos"]]
        picks += [(cell, int(p), "random") for p in rand["_pos"]]
    if not picks:
        return
    arrays: dict[str, np.ndarray] = {}
    items: list[dict[str, Any]] = []
    keys = [f"g{i}" for i in range(len(picks))]
    regions: list[str] = []
    size: list[int] = []
    for m_i, (name, (model, ds, _plan_)) in enumerate(loaded.items()):
        from bias_audit.io.data import collate

        by_id = {sid: i for i, sid in enumerate(ds.ids)}
        idx = [by_id[str(rows.at[p, "id"])] for _, p, _ in picks]
        spec = _spec(config, _plan_, ds)
        if spec.target_layer is None and layers.get(name, {}).get("target_layer"):
            spec = dataclasses.replace(spec, target_layer=layers[name]["target_layer"])
        mrows = samples[samples["model"] == name].set_index("id")
        for start in range(0, len(idx), config.data.batch_size):
            chunk = list(range(start, min(start + config.data.batch_size, len(idx))))
            batch = collate([ds[idx[j]] for j in chunk])
            targets = batch.labels.to(dev) if spec.target == "label" else None
            exp = explain(model, batch.images.to(dev), methods=config.explain.methods,
                          target_layer=spec.target_layer, targets=targets)  # fmt: skip
            small = _shrink(exp.maps[config.explain.methods[0]].detach().float().cpu())
            for j, m in zip(chunk, small, strict=True):
                arrays[f"map/{name}/{keys[j]}"] = m.numpy().astype(np.float16)
            # The other methods are kept for the gallery only: guided ones as (3, h, w) signed.
            for method in config.explain.methods[1:]:
                x = exp.maps[method].detach().float().cpu()
                lead = x.shape[:-2]
                x = _shrink(x.reshape(-1, *x.shape[-2:]))
                x = x.reshape(*lead, *x.shape[-2:])
                for j, m in zip(chunk, x, strict=True):
                    arrays[f"method/{method}/{name}/{keys[j]}"] = m.numpy().astype(np.float16)
            if m_i == 0:
                imgs = _denormalise(batch.images, ds.mean, ds.std)
                masks = _shrink(batch.masks.float().flatten(0, 1)).reshape(
                    len(chunk), len(batch.regions), *small.shape[-2:]) > 0.5  # fmt: skip
                regions, size = list(batch.regions), list(small.shape[-2:])
                for jj, j in enumerate(chunk):
                    arrays[f"image/{keys[j]}"] = imgs[jj]
                    arrays[f"masks/{keys[j]}"] = masks[jj].numpy()
        for j, (cell, p, reason) in enumerate(picks):
            if m_i == 0:
                r = rows.loc[p]
                items.append({"key": keys[j], "id": str(r["id"]), "cell": cell, "reason": reason,
                              "label": str(r["label"]), "models": {}})  # fmt: skip
            mr = mrows.loc[items[j]["id"]]
            items[j]["models"][name] = {
                "pred": str(mr["pred"]),
                "prob": float(mr["prob"]),
                "mass": {role: _num(mr.get(column("mass", role))) for role in ROLES},
            }
    store.write_npz("maps.npz", arrays)
    store.write_json(
        "gallery.json",
        {"regions": regions, "size": size, "methods": list(config.explain.methods),
         "items": items},
    )  # fmt: skip


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _shrink(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, h, w) with the longest side at most GALLERY_SIZE (area average)."""
    h, w = x.shape[-2:]
    scale = min(1.0, GALLERY_SIZE / max(h, w))
    if scale >= 1.0:
        return x
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return torch.nn.functional.interpolate(x[:, None], size=size, mode="area")[:, 0]


def _denormalise(images: torch.Tensor, mean, std) -> np.ndarray:
    x = images.float() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    n, c, h, w = x.shape
    small = _shrink(x.reshape(n * c, h, w)).reshape(n, c, *_shrink(x[:1, 0]).shape[-2:])
    return (small.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _pooled(groups: pd.DataFrame, model: str, metric: str) -> float:
    """The ``all`` cell's value of ``metric`` in the groups table (NaN without one)."""
    hit = groups[
        (groups["model"] == model) & (groups["cell"] == "all") & (groups["metric"] == metric)
    ]
    return float(hit["value"].iloc[0]) if len(hit) else math.nan


def _summary(
    config, ds, plans, layers, samples, tables, findings, nan_maps, dev, *, timings
) -> dict:
    import torchvision

    from bias_audit.core._version import VERSION

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
        },  # fmt: skip
        "timings": timings,
    }
