"""The audit's statistics: the tables every later step reads (groups, gaps, comparisons, ...)."""

from __future__ import annotations

import dataclasses
from itertools import combinations

import numpy as np
import pandas as pd

from bias_audit.core._naming import CONFOUNDER, ROLES, column
from bias_audit.core.config import AuditConfig
from bias_audit.core.findings import BETWEEN_CLASSES, FLIP_EXCESS, POOLED_LIFT, Finding
from bias_audit.core.stats import (
    ALL_CELL,
    cell_quantiles,
    class_rates,
    fairness_differences,
    group_gaps,
    group_stats,
    holm,
    paired_comparison,
    worst_group,
)
from bias_audit.pipelines._step import method_column

#: Per-region occlusion columns summarised per cell when ``[interventions] regions`` asks for them.
OCCLUSION_METRICS = ("flip", "drop", "flip_random")


#: Sample columns summarised per cell (when present); per-region masses and occlusion are added.
STAT_METRICS = (
    *(column("mass", r) for r in ROLES),
    column("lift", CONFOUNDER),
    # the confounder regions' share of the image, for the lift a finding states
    column("area", CONFOUNDER),
    column("area", "causal"),
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


# FLIP_EXCESS: a derived sample column, flip rate minus the same-area random-patch rate per
# image (the gate's max_flip_excess). POOLED_LIFT rows (``all`` cell only): mean mass over mean
# area of a role's regions, the lift a finding, the scoreboard and the gate state (a ratio of
# means: a per-image ratio blows up on tiny regions), with a bootstrap interval over images.

#: Metric columns measured again under each method after the first (``<column>@<method>``).
PER_METHOD_METRICS = (
    *(column("mass", r) for r in ROLES),
    column("lift", CONFOUNDER),
    column("pointing", "causal"),
    column("pointing", CONFOUNDER),
)


def method_metrics(metrics, methods) -> list[str]:
    """``metrics`` followed by their ``@method`` columns for each method after the first."""
    out = list(metrics)
    for method in methods[1:]:
        out.extend(method_column(m, method) for m in PER_METHOD_METRICS if m in metrics)
    return out


def _with_derived(samples: pd.DataFrame) -> pd.DataFrame:
    flip, rand = column("flip", CONFOUNDER), column("flip_random", CONFOUNDER)
    if flip in samples.columns and rand in samples.columns:
        return samples.assign(**{FLIP_EXCESS: samples[flip] - samples[rand]})
    return samples


def _pooled_lifts(samples, methods, *, n_boot: int, seed: int, min_group_size: int):
    """``pooled_lift:<role>[@method]`` rows of the ``all`` cell, one per model."""
    rows = []
    suffixes = ["", *(f"@{m}" for m in methods[1:])]
    for model, frame in samples.groupby("model", sort=False):
        for role in ("causal", CONFOUNDER):
            area_col = column("area", role)
            for suffix in suffixes:
                mass_col = column("mass", role) + suffix
                if mass_col not in frame.columns or area_col not in frame.columns:
                    continue
                mass = frame[mass_col].to_numpy(float)
                area = frame[area_col].to_numpy(float)
                ok = np.isfinite(mass) & np.isfinite(area)
                value, lo, hi = _ratio_ci(mass[ok], area[ok], n_boot=n_boot, seed=seed)
                small = int(ok.sum()) < min_group_size
                rows.append({
                    "model": model, "cell": ALL_CELL, "n": len(frame), "n_valid": int(ok.sum()),
                    "small": small, "metric": f"{POOLED_LIFT}:{role}{suffix}", "value": value,
                    "ci_low": np.nan if small else lo, "ci_high": np.nan if small else hi,
                })  # fmt: skip
    return pd.DataFrame(rows)


def _ratio_ci(num: np.ndarray, den: np.ndarray, *, n_boot: int, seed: int):
    """sum(num) / sum(den) and its percentile bootstrap interval (images resampled)."""
    n = len(num)
    if n == 0 or den.sum() <= 0:
        return np.nan, np.nan, np.nan
    value = float(num.sum() / den.sum())
    if n < 2:
        return value, np.nan, np.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return value, np.nan, np.nan
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return value, float(lo), float(hi)


def _within_class_gaps(samples, tested, *, groups, classes, common_gap) -> pd.DataFrame:
    """Gaps between group cells inside each class (``scope`` = the class), and gaps between
    the classes themselves (``scope`` = :data:`BETWEEN_CLASSES`): a class that is harder, or
    whose objects are smaller, is a class effect, never a group bias."""
    parts = []
    if groups:
        for c in classes:
            sub = samples[samples["label"] == c]
            if len(sub):
                parts.append(
                    group_gaps(sub, groups=groups, metrics=tested, **common_gap).assign(scope=c)
                )
    parts.append(
        group_gaps(samples, groups=[], metrics=tested, **common_gap).assign(scope=BETWEEN_CLASSES)
    )
    return pd.concat(parts, ignore_index=True)


def _statistics(samples: pd.DataFrame, config: AuditConfig, regions) -> dict[str, pd.DataFrame]:
    """Group statistics, worst groups, class rates, distributions, gaps, fairness differences
    and paired comparisons (raw p-values): every number the findings and the report show."""

    st, groups = config.stats, list(config.data.groups)
    methods = config.explain.methods
    samples = _with_derived(samples)
    have = set(samples.columns)
    per_region = [column(k, r) for r in regions for k in ("mass", *OCCLUSION_METRICS)]
    base = [m for m in (*STAT_METRICS, FLIP_EXCESS, *per_region) if m in have]
    summarised = [m for m in method_metrics(base, methods) if m in have]
    tested = [m for m in method_metrics(TESTED_METRICS, methods) if m in have]
    classes = sorted(set(samples["label"]) | set(samples["pred"]))
    common_gap = {
        "min_group_size": st.min_group_size, "seed": st.seed, "n_perm": max(1, st.permutations),
    }  # fmt: skip
    group_table = group_stats(
        samples,
        metrics=summarised,
        classes=classes,
        n_boot=st.bootstrap,
        groups=groups,
        min_group_size=st.min_group_size,
        seed=st.seed,
    )
    lifts = _pooled_lifts(
        samples, methods, n_boot=st.bootstrap, seed=st.seed, min_group_size=st.min_group_size
    )
    if len(lifts):
        group_table = pd.concat([group_table, lifts.astype({"n": "int64", "n_valid": "int64"})],
                                ignore_index=True)  # fmt: skip
    tables = {
        "groups": group_table,
        "gaps": _within_class_gaps(
            samples,
            tested,
            groups=groups,
            classes=sorted(set(samples["label"])),
            common_gap=common_gap,
        ),  # fmt: skip
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
            samples,
            a,
            b,
            metrics=["accuracy", *tested],
            n_boot=st.bootstrap,
            groups=groups,
            min_group_size=st.min_group_size,
            seed=st.seed,
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
    pieces: list[tuple[str, int, float]] = []
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
            col = tables[name].columns.get_loc("p_adjusted")
            assert isinstance(col, int)  # the column is unique, so its location is one int
            tables[name].iloc[i, col] = a
    # Findings that restate a gap or a comparison take that row's adjusted p-value.
    for i, d in enumerate(drafts):
        if d.source is not None:
            table, row = d.source
            drafts[i] = dataclasses.replace(
                d, p_adjusted=float(tables[table]["p_adjusted"].iloc[row])
            )
    return drafts
