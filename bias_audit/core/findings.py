"""Findings: statements an auditor can paste into a review, each with its numbers.

All rules and all thresholds live here. A finding is drafted with its raw p-value; the run
Holm-adjusts every p-value of the audit together (findings, gaps, comparisons) and then
:func:`settle_findings` decides severities with the adjusted values, so one significance rule
holds across the whole report.

Severity: ``high`` / ``medium`` / ``low`` by the thresholds below when the effect is
significant (``p_adjusted < ALPHA``) or has no test; ``info`` otherwise, and for notes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bias_audit.core._naming import CONFOUNDER, cell_name, column

__all__ = ["THRESHOLDS", "ALPHA", "draft_findings", "settle_findings", "severity_of"]

#: Family-wise significance level after Holm's correction.
ALPHA = 0.05

#: Effect sizes that make a finding high / medium / low (checked in that order).
THRESHOLDS: dict[str, dict[str, float]] = {
    # share of the map's mass inside confounder regions
    "confounder_mass": {"high": 0.50, "medium": 0.30, "low": 0.15},
    # that share divided by the regions' share of the image (1 = a uniform map)
    "confounder_lift": {"high": 3.0, "medium": 2.0, "low": 1.25},
    # overall accuracy minus the worst judged cell's accuracy
    "worst_group_gap": {"high": 0.10, "medium": 0.05, "low": 0.02},
    # flip rate when the confounders are occluded, minus the rate for same-area random patches
    "flip_excess": {"high": 0.20, "medium": 0.10, "low": 0.05},
    # absolute gap between groups of a metric (accuracy or attention share)
    "group_gap": {"high": 0.10, "medium": 0.05, "low": 0.02},
    # absolute paired difference between two models
    "model_difference": {"high": 0.10, "medium": 0.05, "low": 0.02},
}

_ORDER = ("high", "medium", "low", "info")


def severity_of(rule: str, effect: float) -> str:
    """Severity of an effect of size ``effect`` under ``THRESHOLDS[rule]`` (``info`` below low)."""
    if effect is None or not math.isfinite(effect):
        return "info"
    for level in ("high", "medium", "low"):
        if abs(effect) >= THRESHOLDS[rule][level]:
            return level
    return "info"


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f}"


def _mean_ci(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95% CI (NaN CI when there are no resamples)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if n_boot <= 0 or values.size < 2:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    # Chunked so that memory stays bounded for large runs.
    means = []
    for start in range(0, n_boot, 256):
        k = min(256, n_boot - start)
        idx = rng.integers(0, values.size, size=(k, values.size))
        means.append(values[idx].mean(axis=1))
    lo, hi = np.quantile(np.concatenate(means), [0.025, 0.975])
    return mean, float(lo), float(hi)


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _one_sided_wilcoxon(diff: np.ndarray) -> float:
    """p-value that ``diff`` is centred above 0 (NaN when there is nothing to test)."""
    from scipy.stats import wilcoxon

    diff = diff[np.isfinite(diff)]
    if diff.size < 2 or np.all(diff == 0):
        return math.nan
    return float(wilcoxon(diff, alternative="greater", zero_method="wilcox").pvalue)


def _finding(rule: str, model: str | None, **kw: Any) -> dict[str, Any]:
    base = {
        "rule": rule,
        "severity": "info",
        "model": model,
        "cell": None,
        "metric": None,
        "value": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p_value": math.nan,
        "p_adjusted": math.nan,
        "text": "",
        "effect": math.nan,
    }
    base.update(kw)
    return base


def draft_findings(
    samples: pd.DataFrame,
    *,
    groups: Sequence[str],
    roles: Mapping[str, Sequence[str]],
    min_group_size: int,
    bootstrap: int,
    seed: int,
    gaps: pd.DataFrame | None = None,
    comparisons: pd.DataFrame | None = None,
    nan_maps: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Draft every finding of an audit, each with its raw ``p_value`` (``p_adjusted`` NaN).

    Args:
        samples: the samples table (all models).
        groups: group attribute columns.
        roles: role -> region names, for the text.
        min_group_size: cells below it get no verdict (an ``info`` note lists them).
        bootstrap, seed: resamples and seed for the CIs of means.
        gaps: ``metrics.group_gaps`` output, optional.
        comparisons: ``metrics.paired_comparison`` output (``mean_diff`` is a - b), optional.
        nan_maps: model -> number of all-zero or non-finite maps.
    """
    out: list[dict[str, Any]] = []
    conf_col, area_col = column("mass", CONFOUNDER), column("area", CONFOUNDER)
    conf_names = ", ".join(roles.get(CONFOUNDER, ())) or "confounder"
    for i, (model, rows) in enumerate(samples.groupby("model", sort=False)):
        if conf_col in rows.columns and rows[conf_col].notna().any():
            mass = rows[conf_col].to_numpy(float)
            area = rows[area_col].to_numpy(float)
            m, lo, hi = _mean_ci(mass, bootstrap, seed + i)
            a = float(np.nanmean(area))
            lift = m / a if a > 0 else math.nan
            p = _one_sided_wilcoxon(mass - area)
            effect_sev = min(
                severity_of("confounder_mass", m),
                severity_of("confounder_lift", lift),
                key=_ORDER.index,
            )
            out.append(
                _finding(
                    "confounder_attention",
                    model,
                    metric=conf_col,
                    value=m,
                    ci_low=lo,
                    ci_high=hi,
                    p_value=p,
                    effect=m,
                    proposed=effect_sev,
                    text=(
                        f"{model}: {_pct(m)}% [{_pct(lo)}, {_pct(hi)}] of attention on confounder "
                        f"regions ({conf_names}: {_pct(a)}% of the image), {lift:.1f}× what a "
                        "uniform map gives"
                    ),
                )
            )
        out.extend(_worst_group(model, rows, groups, min_group_size))
        flip, rand = column("flip", CONFOUNDER), column("flip_random", CONFOUNDER)
        if flip in rows.columns and rand in rows.columns and rows[flip].notna().any():
            f = rows[flip].to_numpy(float)
            r = rows[rand].to_numpy(float)
            has_baseline = bool(np.isfinite(r).any())
            if not has_baseline:
                # No random-patch baseline was run: judge the flip rate against zero.
                r = np.where(np.isfinite(f), 0.0, np.nan)
            ok = np.isfinite(f) & np.isfinite(r)
            fm, lo, hi = _mean_ci(f[ok], bootstrap, seed + 100 + i)
            rm = float(r[ok].mean()) if ok.any() else math.nan
            base = (
                f"against {_pct(rm)}% for random patches of the same area"
                if has_baseline
                else "(no random-patch baseline was run)"
            )
            out.append(
                _finding(
                    "confounder_reliance", model, metric=flip, value=fm, ci_low=lo, ci_high=hi,
                    p_value=_one_sided_wilcoxon(f[ok] - r[ok]), effect=fm - rm,
                    proposed=severity_of("flip_excess", fm - rm),
                    text=(f"{model}: occluding the confounder regions flips {_pct(fm)}% "
                          f"[{_pct(lo)}, {_pct(hi)}] of predictions, {base}"),
                )
            )  # fmt: skip
        if nan_maps and nan_maps.get(model):
            out.append(
                _finding(
                    "degenerate_maps",
                    model,
                    value=float(nan_maps[model]),
                    text=(
                        f"{model}: {nan_maps[model]} image(s) got an all-zero or non-finite map; "
                        "their attention metrics are NaN and left out of the statistics"
                    ),
                )
            )
    out.extend(_gap_findings(gaps))
    out.extend(_comparison_findings(comparisons))
    out.extend(_small_cells(samples, groups, min_group_size))
    return out


def _worst_group(model, rows, groups, min_n) -> list[dict[str, Any]]:
    keys = [*groups, "label"]
    cells = []
    for values, cell in rows.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        if len(cell) >= min_n:
            cells.append((cell_name(values), int(cell["correct"].sum()), len(cell)))
    if len(cells) < 2:
        return []
    overall = float(rows["correct"].mean())
    name, k, n = min(cells, key=lambda c: c[1] / c[2])
    acc = k / n
    lo, hi = _wilson(k, n)
    # Is the worst cell worse than all other images together? One-sided Fisher exact test.
    from scipy.stats import fisher_exact

    k_all, n_all = int(rows["correct"].sum()), len(rows)
    table = [[k, n - k], [k_all - k, (n_all - n) - (k_all - k)]]
    p = float(fisher_exact(table, alternative="less").pvalue)
    return [
        _finding(
            "worst_group_accuracy",
            model,
            cell=name,
            metric="accuracy",
            value=acc,
            ci_low=lo,
            ci_high=hi,
            p_value=p,
            effect=overall - acc,
            proposed=severity_of("worst_group_gap", overall - acc),
            text=(
                f"{model}: accuracy {_pct(acc)}% [{_pct(lo)}, {_pct(hi)}] on {name} (n={n}), "
                f"against {_pct(overall)}% overall"
            ),
        )
    ]


def _gap_findings(gaps: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Gaps of attention or reliance between cells (accuracy has its own rule above)."""
    if gaps is None or gaps.empty or "p_value" not in gaps.columns:
        return []
    out = []
    for i, row in enumerate(gaps.to_dict("records")):
        gap = float(row["gap"])
        # Accuracy has its own rule; a gap below the lowest threshold says nothing.
        if row["metric"] == "accuracy" or severity_of("group_gap", gap) == "info":
            continue
        out.append(
            _finding(
                # The value is the gap, not the metric itself: name it so, or the report would
                # print "mass:causal = 0.18" beside a cell whose mass is 0.60.
                "group_gap", row["model"], metric=f"gap in {row['metric']}", value=gap,
                p_value=float(row["p_value"]), effect=gap, proposed=severity_of("group_gap", gap),
                source=("gaps", i), cell=row["best_cell"],
                text=(f"{row['model']}: {row['metric']} ranges from {row['worst_value']:.2f} "
                      f"({row['worst_cell']}) to {row['best_value']:.2f} ({row['best_cell']}), "
                      f"a gap of {gap:.2f} across {int(row['n_cells'])} cells"),
            )
        )  # fmt: skip
    return out


def _comparison_findings(comparisons: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Paired differences between models over all images (the ``all`` cell)."""
    if comparisons is None or comparisons.empty or "p_value" not in comparisons.columns:
        return []
    out = []
    for i, row in enumerate(comparisons.to_dict("records")):
        if row.get("cell") != "all" or row["metric"] not in (
            "accuracy",
            column("mass", CONFOUNDER),
        ):
            continue
        # The table holds a - b; the text reads as the change from a to b.
        diff = -float(row["mean_diff"])
        if severity_of("model_difference", diff) == "info":
            continue
        lo, hi = -float(row["ci_high"]), -float(row["ci_low"])
        pair = f"{row['model_b']} vs {row['model_a']}"
        out.append(
            _finding(
                "model_difference", pair, metric=row["metric"], value=diff, ci_low=lo, ci_high=hi,
                p_value=float(row["p_value"]), effect=diff, source=("comparisons", i),
                proposed=severity_of("model_difference", diff),
                text=(f"{pair}: {row['metric']} changes by {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                      f"on the same {int(row['n'])} images"),
            )
        )  # fmt: skip
    return out


def _small_cells(samples, groups, min_n) -> list[dict[str, Any]]:
    if samples.empty:
        return []
    first = samples[samples["model"] == samples["model"].iloc[0]]
    small = []
    for values, cell in first.groupby([*groups, "label"], sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        if len(cell) < min_n:
            small.append(f"{cell_name(values)} (n={len(cell)})")
    if not small:
        return []
    return [
        _finding(
            "small_cells",
            None,
            value=float(len(small)),
            text=(
                f"{len(small)} cell(s) below the minimum group size of {min_n}: "
                f"{'; '.join(small)}; shown without interval or verdict"
            ),
        )
    ]


def settle_findings(drafts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Final severities from the Holm-adjusted p-values; findings sorted by severity.

    A drafted effect keeps its proposed severity if it has no test or ``p_adjusted < ALPHA``;
    otherwise it becomes ``info`` and its text says it is not significant.
    """
    out = []
    for d in drafts:
        f = dict(d)
        proposed = f.pop("proposed", "info")
        f.pop("effect", None)
        f.pop("source", None)
        p_adj = f.get("p_adjusted", math.nan)
        tested = p_adj is not None and math.isfinite(p_adj)
        if tested and p_adj >= ALPHA:
            f["severity"] = "info"
            f["text"] += f" (not significant: Holm-adjusted p = {p_adj:.3g})"
        else:
            f["severity"] = proposed
            if tested:
                f["text"] += f" (Holm-adjusted p = {p_adj:.2g})"
        out.append(f)
    out.sort(key=lambda f: _ORDER.index(f["severity"]))
    return out
