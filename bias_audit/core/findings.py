"""Findings: statements an auditor can paste into a review, each with its numbers.

Findings are a registry of rules (:data:`RULES`): each :class:`Rule` has a name, its
thresholds and a function from the audit's tables (:class:`FindingInputs`) to typed
:class:`Finding` records. Every value and interval a finding states is read from the tables
the audit writes (``groups.parquet``, ``gaps.parquet``, ``comparisons.parquet`` and the
worst-group table of :func:`bias_audit.core.stats.worst_group`); nothing is recomputed here,
so a finding and the table it restates always show the same interval. Only the tests that
have no table of their own (Wilcoxon of mass against area, Fisher of the worst cell) are
computed here.

A finding is drafted with its raw p-value and a proposed severity; the run Holm-adjusts every
p-value of the audit together (findings, gaps, comparisons) and then :func:`settle_findings`
decides severities with the adjusted values, so one significance rule holds across the
report.

Severity: ``high`` / ``medium`` / ``low`` by the rule's thresholds when the effect is
significant (``p_adjusted < ALPHA``) or has no test; ``info`` otherwise, and for notes.

The JSON shape (``summary.json`` ``findings``, :meth:`Finding.to_dict`): ``rule, severity,
model, cell, metric, value, ci_low, ci_high, p_value, p_adjusted, text``; numbers that do not
apply are NaN (``null`` in JSON).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact, wilcoxon

from bias_audit.core._naming import CONFOUNDER, column

__all__ = [
    "ALPHA",
    "THRESHOLDS",
    "RULES",
    "Finding",
    "FindingInputs",
    "Rule",
    "draft_findings",
    "settle_findings",
    "severity_of",
]

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
    # share of a model's images without a valid map: above half, its attention numbers rest
    # on a minority of the data and the model itself is suspect (NaN, Inf or zero weights)
    "invalid_maps": {"high": 0.50},
}

SEVERITIES = ("high", "medium", "low", "info")
_NUMBERS = ("value", "ci_low", "ci_high", "p_value", "p_adjusted")


def severity_of(rule: str, effect: float | None) -> str:
    """Severity of an effect of size ``effect`` under ``THRESHOLDS[rule]`` (``info`` below low)."""
    if effect is None or not math.isfinite(effect):
        return "info"
    for level in ("high", "medium", "low"):
        limit = THRESHOLDS[rule].get(level)
        if limit is not None and abs(effect) >= limit:
            return level
    return "info"


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One finding.

    Attributes:
        rule: the name of the rule that drew it.
        severity: ``high`` / ``medium`` / ``low`` / ``info``; a draft holds ``info`` until
            :func:`settle_findings`.
        model: the model (``"b vs a"`` for a comparison), None for a note about the data.
        cell, metric: where and what, when they apply.
        value, ci_low, ci_high: the number stated and its 95% interval, as in its table.
        p_value, p_adjusted: raw and Holm-adjusted p-value (NaN without a test).
        text: the sentence for the report.
        proposed: the severity the effect size earns, before the significance test.
        source: ``(table, row)`` when the finding restates a row of ``gaps`` or
            ``comparisons``, whose adjusted p-value it then takes; None otherwise.
    """

    rule: str
    model: str | None
    severity: str = "info"
    cell: str | None = None
    metric: str | None = None
    value: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    p_adjusted: float = math.nan
    text: str = ""
    proposed: str = "info"
    source: tuple[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``summary.json``'s findings (no ``proposed`` or ``source``)."""
        keys = ("rule", "severity", "model", "cell", "metric", *_NUMBERS, "text")
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict` (``null`` numbers come back as NaN)."""
        kw = {k: d.get(k) for k in ("rule", "severity", "model", "cell", "metric", "text")}
        kw["severity"] = kw["severity"] or "info"
        kw["text"] = kw["text"] or ""
        kw.update({k: math.nan if d.get(k) is None else float(d[k]) for k in _NUMBERS})
        return cls(**kw)


@dataclass(frozen=True, kw_only=True)
class FindingInputs:
    """The tables the rules read.

    Attributes:
        samples: the samples table (for the per-image tests only).
        groups: ``stats.group_stats`` output; its ``all`` cell gives each model's means and
            intervals.
        worst: ``stats.worst_group`` output over ``groups`` (accuracy).
        gaps: ``stats.group_gaps`` output, optional.
        comparisons: ``stats.paired_comparison`` rows (``mean_diff`` is a - b), optional.
        roles: role -> region names, for the text.
        min_group_size: cells below it get no verdict (an ``info`` note lists them).
        map_counts: model -> (images without a valid map, images).
    """

    samples: pd.DataFrame
    groups: pd.DataFrame
    worst: pd.DataFrame
    gaps: pd.DataFrame | None = None
    comparisons: pd.DataFrame | None = None
    roles: Mapping[str, Sequence[str]] = field(default_factory=dict)
    min_group_size: int = 20
    map_counts: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def pooled(self, model: str, metric: str) -> Mapping[str, Any] | None:
        """The ``all`` cell's row of ``metric`` for ``model`` in ``groups``, if any."""
        g = self.groups
        if g.empty:
            return None
        hit = g[(g["model"] == model) & (g["cell"] == "all") & (g["metric"] == metric)]
        return None if hit.empty else hit.iloc[0].to_dict()

    @property
    def models(self) -> list[str]:
        return [str(m) for m in dict.fromkeys(self.samples["model"])] if len(self.samples) else []


@dataclass(frozen=True)
class Rule:
    """A finding rule: its name, the THRESHOLDS entries it uses, and its compute function."""

    name: str
    thresholds: tuple[str, ...]
    compute: Callable[[FindingInputs], list[Finding]]


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f}"


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _one_sided_wilcoxon(diff: np.ndarray) -> float:
    """p-value that ``diff`` is centred above 0 (NaN when there is nothing to test)."""

    diff = diff[np.isfinite(diff)]
    if diff.size < 2 or np.all(diff == 0):
        return math.nan
    return float(wilcoxon(diff, alternative="greater", zero_method="wilcox").pvalue)


def _rows(inputs: FindingInputs, model: str) -> pd.DataFrame:
    return inputs.samples[inputs.samples["model"] == model]


# ----------------------------------------------------------------------------------------------
# Rules


def _confounder_attention(inputs: FindingInputs) -> list[Finding]:
    conf_col, area_col = column("mass", CONFOUNDER), column("area", CONFOUNDER)
    names = ", ".join(inputs.roles.get(CONFOUNDER, ())) or "confounder"
    out = []
    for model in inputs.models:
        row = inputs.pooled(model, conf_col)
        if row is None or not math.isfinite(_f(row["value"])):
            continue
        m, lo, hi = _f(row["value"]), _f(row["ci_low"]), _f(row["ci_high"])
        area = inputs.pooled(model, area_col)
        a = _f(area["value"]) if area else math.nan
        lift = m / a if a > 0 else math.nan
        rows = _rows(inputs, model)
        p = math.nan
        if area_col in rows:
            p = _one_sided_wilcoxon(rows[conf_col].to_numpy(float) - rows[area_col].to_numpy(float))
        proposed = min(
            severity_of("confounder_mass", m), severity_of("confounder_lift", lift),
            key=SEVERITIES.index,
        )  # fmt: skip
        out.append(
            Finding(
                rule="confounder_attention", model=model, metric=conf_col, value=m, ci_low=lo,
                ci_high=hi, p_value=p, proposed=proposed,
                text=(f"{model}: {_pct(m)}% [{_pct(lo)}, {_pct(hi)}] of attention on confounder "
                      f"regions ({names}: {_pct(a)}% of the image), {lift:.1f}× what a uniform "
                      "map gives"),
            )
        )  # fmt: skip
    return out


def _worst_group_accuracy(inputs: FindingInputs) -> list[Finding]:

    out = []
    for w in inputs.worst.to_dict("records"):
        if w["n_cells"] < 2 or w["metric"] != "accuracy":
            continue
        acc, overall = float(w["value"]), float(w["overall"])
        n = int(w["n_valid"])
        k = round(acc * n)
        pooled = inputs.pooled(w["model"], "accuracy")
        n_all = int(pooled["n_valid"]) if pooled else n
        k_all = round(overall * n_all)
        # Is the worst cell worse than all other images together? One-sided Fisher exact test.
        table = [[k, n - k], [k_all - k, (n_all - n) - (k_all - k)]]
        p = float(fisher_exact(table, alternative="less").pvalue)
        lo, hi = float(w["ci_low"]), float(w["ci_high"])
        out.append(
            Finding(
                rule="worst_group_accuracy", model=w["model"], cell=w["cell"], metric="accuracy",
                value=acc, ci_low=lo, ci_high=hi, p_value=p,
                proposed=severity_of("worst_group_gap", overall - acc),
                text=(f"{w['model']}: accuracy {_pct(acc)}% [{_pct(lo)}, {_pct(hi)}] on "
                      f"{w['cell']} (n={n}), against {_pct(overall)}% overall"),
            )
        )  # fmt: skip
    return out


def _confounder_reliance(inputs: FindingInputs) -> list[Finding]:
    flip, rand = column("flip", CONFOUNDER), column("flip_random", CONFOUNDER)
    out = []
    for model in inputs.models:
        row = inputs.pooled(model, flip)
        if row is None or not math.isfinite(_f(row["value"])):
            continue
        fm, lo, hi = _f(row["value"]), _f(row["ci_low"]), _f(row["ci_high"])
        base_row = inputs.pooled(model, rand)
        rm = _f(base_row["value"]) if base_row else math.nan
        rows = _rows(inputs, model)
        f = rows[flip].to_numpy(float)
        has_baseline = math.isfinite(rm)
        # No random-patch baseline was run: judge the flip rate against zero.
        r = rows[rand].to_numpy(float) if has_baseline else np.where(np.isfinite(f), 0.0, np.nan)
        rm = rm if has_baseline else 0.0
        base = (
            f"against {_pct(rm)}% for random patches of the same area"
            if has_baseline
            else "(no random-patch baseline was run)"
        )
        out.append(
            Finding(
                rule="confounder_reliance", model=model, metric=flip, value=fm, ci_low=lo,
                ci_high=hi, p_value=_one_sided_wilcoxon(f - r),
                proposed=severity_of("flip_excess", fm - rm),
                text=(f"{model}: occluding the confounder regions flips {_pct(fm)}% "
                      f"[{_pct(lo)}, {_pct(hi)}] of predictions, {base}"),
            )
        )  # fmt: skip
    return out


def _degenerate_maps(inputs: FindingInputs) -> list[Finding]:
    out = []
    for model, (bad, n) in inputs.map_counts.items():
        if not bad:
            continue
        share = bad / n if n else math.nan
        proposed = severity_of("invalid_maps", share)
        text = (
            f"{model}: {bad} of {n} image(s) ({_pct(share)}%) got an all-zero or non-finite "
            "map; their attention metrics are NaN and left out of the statistics"
        )
        if proposed == "high":
            text += (
                "; most maps are invalid, so the model's attention numbers cannot be trusted "
                "(check its weights for NaN, Inf or all zeros)"
            )
        out.append(
            Finding(rule="degenerate_maps", model=model, value=share, proposed=proposed, text=text)
        )
    return out


def _group_gap(inputs: FindingInputs) -> list[Finding]:
    """Gaps of attention or reliance between cells (accuracy has its own rule)."""
    gaps = inputs.gaps
    if gaps is None or gaps.empty or "p_value" not in gaps.columns:
        return []
    out = []
    for i, row in enumerate(gaps.to_dict("records")):
        gap = float(row["gap"])
        if row["metric"] == "accuracy" or severity_of("group_gap", gap) == "info":
            continue
        out.append(
            Finding(
                # The value is the gap, not the metric itself: name it so, or the report would
                # print "mass:causal = 0.18" beside a cell whose mass is 0.60.
                rule="group_gap", model=row["model"], metric=f"gap in {row['metric']}",
                value=gap, p_value=float(row["p_value"]), proposed=severity_of("group_gap", gap),
                source=("gaps", i), cell=row["best_cell"],
                text=(f"{row['model']}: {row['metric']} ranges from {row['worst_value']:.2f} "
                      f"({row['worst_cell']}) to {row['best_value']:.2f} ({row['best_cell']}), "
                      f"a gap of {gap:.2f} across {int(row['n_cells'])} cells"),
            )
        )  # fmt: skip
    return out


def _model_difference(inputs: FindingInputs) -> list[Finding]:
    """Paired differences between models over all images (the ``all`` cell)."""
    comparisons = inputs.comparisons
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
            Finding(
                rule="model_difference", model=pair, metric=row["metric"], value=diff,
                ci_low=lo, ci_high=hi, p_value=float(row["p_value"]), source=("comparisons", i),
                proposed=severity_of("model_difference", diff),
                text=(f"{pair}: {row['metric']} changes by {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                      f"on the same {int(row['n'])} images"),
            )
        )  # fmt: skip
    return out


def _small_cells(inputs: FindingInputs) -> list[Finding]:
    models = inputs.models
    g = inputs.groups
    if not models or g.empty:
        return []
    acc = g[(g["model"] == models[0]) & (g["metric"] == "accuracy") & (g["cell"] != "all")]
    small = [f"{r['cell']} (n={int(r['n'])})" for r in acc.to_dict("records") if r["small"]]
    if not small:
        return []
    return [
        Finding(
            rule="small_cells", model=None, value=float(len(small)),
            text=(f"{len(small)} cell(s) below the minimum group size of "
                  f"{inputs.min_group_size}: {'; '.join(small)}; shown without interval or "
                  "verdict"),
        )
    ]  # fmt: skip


#: Every rule, in the order their findings are drafted.
RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("confounder_attention", ("confounder_mass", "confounder_lift"), _confounder_attention),
        Rule("worst_group_accuracy", ("worst_group_gap",), _worst_group_accuracy),
        Rule("confounder_reliance", ("flip_excess",), _confounder_reliance),
        Rule("degenerate_maps", ("invalid_maps",), _degenerate_maps),
        Rule("group_gap", ("group_gap",), _group_gap),
        Rule("model_difference", ("model_difference",), _model_difference),
        Rule("small_cells", (), _small_cells),
    )
}


def draft_findings(inputs: FindingInputs) -> list[Finding]:
    """Draft every finding of an audit, each with its raw ``p_value`` (``p_adjusted`` NaN)."""
    return [f for rule in RULES.values() for f in rule.compute(inputs)]


def settle_findings(drafts: Sequence[Finding]) -> list[Finding]:
    """Final severities from the Holm-adjusted p-values; findings sorted by severity.

    A drafted effect keeps its proposed severity if it has no test or ``p_adjusted < ALPHA``;
    otherwise it becomes ``info`` and its text says it is not significant.
    """
    out = []
    for f in drafts:
        p_adj = f.p_adjusted
        tested = math.isfinite(p_adj)
        if tested and p_adj >= ALPHA:
            f = dataclasses.replace(
                f,
                severity="info",
                text=f.text + f" (not significant: Holm-adjusted p = {p_adj:.3g})",
            )
        else:
            text = f.text + (f" (Holm-adjusted p = {p_adj:.2g})" if tested else "")
            f = dataclasses.replace(f, severity=f.proposed, text=text)
        out.append(f)
    out.sort(key=lambda f: SEVERITIES.index(f.severity))
    return out
