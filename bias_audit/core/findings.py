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
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact, wilcoxon

from bias_audit.core._naming import CONFOUNDER, column

#: groups.parquet metric prefix of the pooled lift (mean mass over mean area of a role).
POOLED_LIFT = "pooled_lift"
#: groups.parquet metric: flip rate minus the random-patch rate, per image then averaged.
FLIP_EXCESS = column("flip_excess", CONFOUNDER)
#: ``scope`` of a gaps row between the classes themselves.
BETWEEN_CLASSES = "between classes"

__all__ = [
    "ALPHA",
    "THRESHOLDS",
    "RULES",
    "Finding",
    "FindingInputs",
    "Rule",
    "draft_findings",
    "model_changes",
    "rules_table",
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
    # 1 minus the causal regions' lift (upper bound): how far attention falls short of a
    # uniform map's share of the causal regions
    "causal_shortfall": {"high": 0.50, "medium": 0.25, "low": 0.10},
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
        kind: ``risk`` (a risk of one model) or ``info`` (context, e.g. a class effect: never
            a risk, whatever its size).
        n: the images the value rests on, when it applies.
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
    kind: str = "risk"
    n: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``summary.json``'s findings (no ``proposed`` or ``source``)."""
        keys = ("rule", "kind", "severity", "model", "cell", "metric", *_NUMBERS, "n", "text")
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict` (``null`` numbers come back as NaN)."""
        keys = ("rule", "severity", "model", "cell", "metric", "text", "n")
        kw: dict[str, Any] = {k: d.get(k) for k in keys}
        kw["severity"] = kw["severity"] or "info"
        kw["kind"] = d.get("kind") or "risk"
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
        # Column names are strings, so the row's keys are too.
        return None if hit.empty else cast("dict[str, Any]", hit.iloc[0].to_dict())

    @property
    def models(self) -> list[str]:
        return [str(m) for m in dict.fromkeys(self.samples["model"])] if len(self.samples) else []


@dataclass(frozen=True)
class Rule:
    """A finding rule: its name, the THRESHOLDS entries it uses, its compute function, the
    kind of its findings and what it measures (for the rules table)."""

    name: str
    thresholds: tuple[str, ...]
    compute: Callable[[FindingInputs], list[Finding]]
    kind: str = "risk"
    description: str = ""


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


#: Below this share of attention, a confounder's lift is too little attention to matter (a
#: watermark on 1.6% of the image drew 4.6% of a shortcut model's attention: lift 2.9).
MIN_CONFOUNDER_MASS = 0.02


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
        lift_row = inputs.pooled(model, f"{POOLED_LIFT}:{CONFOUNDER}")
        lift = _f(lift_row["value"]) if lift_row else math.nan
        lift_low = _f(lift_row["ci_low"]) if lift_row else math.nan
        lift_low = lift_low if math.isfinite(lift_low) else lift
        rows = _rows(inputs, model)
        p = math.nan
        if area_col in rows:
            p = _one_sided_wilcoxon(rows[conf_col].to_numpy(float) - rows[area_col].to_numpy(float))
        # The mass counts only when the map favours the regions (a confounder that covers most
        # of the image gets much attention from any map); the lift counts, judged on the low
        # end of its interval, only when the mass is not negligible.
        by_mass = severity_of("confounder_mass", m) if lift >= 1.25 else "info"
        by_lift = severity_of("confounder_lift", lift_low) if m >= MIN_CONFOUNDER_MASS else "info"
        proposed = min(by_mass, by_lift, key=SEVERITIES.index)
        out.append(
            Finding(
                rule="confounder_attention", model=model, metric=conf_col, value=m, ci_low=lo,
                ci_high=hi, p_value=p, proposed=proposed, n=_n(row),
                text=(f"{model}: {_pct(m)}% [{_pct(lo)}, {_pct(hi)}] of attention on confounder "
                      f"regions ({names}: {_pct(a)}% of the image), {lift:.1f}× what a uniform "
                      "map gives"),
            )
        )  # fmt: skip
    return out


def _n(row: Mapping[str, Any] | None) -> int | None:
    if row is None:
        return None
    v = _f(row.get("n_valid"))
    return int(v) if math.isfinite(v) else None


def _attention_elsewhere(inputs: FindingInputs) -> list[Finding]:
    """Attention that leaves the causal regions: no more on them than a uniform map gives."""
    mass_col, area_col = column("mass", "causal"), column("area", "causal")
    names = ", ".join(inputs.roles.get("causal", ())) or "causal"
    out = []
    for model in inputs.models:
        lift_row = inputs.pooled(model, f"{POOLED_LIFT}:causal")
        row = inputs.pooled(model, mass_col)
        if lift_row is None or row is None or not math.isfinite(_f(lift_row["value"])):
            continue
        lift, lift_high = _f(lift_row["value"]), _f(lift_row["ci_high"])
        if lift >= 1:
            continue  # the causal regions get more than a uniform map's share: nothing left them
        lift_high = lift_high if math.isfinite(lift_high) else lift
        # Judged on the high end of the interval: a shortfall the data cannot show is none.
        proposed = severity_of("causal_shortfall", 1.0 - lift_high) if lift_high < 1 else "info"
        m = _f(row["value"])
        area = inputs.pooled(model, area_col)
        a = _f(area["value"]) if area else math.nan
        bg = inputs.pooled(model, column("mass", "background"))
        conf = inputs.pooled(model, column("mass", CONFOUNDER))
        where = f"background {_pct(_f(bg['value']) if bg else math.nan)}%"
        if conf is not None and math.isfinite(_f(conf["value"])):
            where += f", confounders {_pct(_f(conf['value']))}%"
        rows = _rows(inputs, model)
        p = math.nan
        if area_col in rows:
            p = _one_sided_wilcoxon(rows[area_col].to_numpy(float) - rows[mass_col].to_numpy(float))
        out.append(
            Finding(
                rule="attention_elsewhere", model=model, metric=mass_col, value=m,
                ci_low=_f(row["ci_low"]), ci_high=_f(row["ci_high"]), p_value=p,
                proposed=proposed, n=_n(row),
                text=(f"{model}: {_pct(m)}% of attention on the causal regions ({names}: "
                      f"{_pct(a)}% of the image), {lift:.2f}× a uniform map; the rest goes "
                      f"elsewhere ({where})"),
            )
        )  # fmt: skip
    return out


def _worst_group_accuracy(inputs: FindingInputs) -> list[Finding]:
    """The worst cell against the other cells of its own class: a class that is simply
    harder is a class effect (see ``class_difference``), not a group's risk."""
    out = []
    samples = inputs.samples
    for w in inputs.worst.to_dict("records"):
        if w["n_cells"] < 2 or w["metric"] != "accuracy":
            continue
        acc = float(w["value"])
        n = int(w["n_valid"])
        k = round(acc * n)
        cls = _cell_class(inputs, w["model"], w["cell"])
        rows = _rows(inputs, w["model"])
        if cls is not None and "label" in samples.columns:
            rows = rows[rows["label"].astype(str) == cls]
        n_cls, k_cls = len(rows), int(rows["correct"].sum())
        ref = k_cls / n_cls if n_cls else math.nan
        p = math.nan
        if n_cls > n:
            # Is the worst cell worse than the rest of its class? One-sided Fisher exact test.
            table = [[k, n - k], [k_cls - k, (n_cls - n) - (k_cls - k)]]
            p = float(fisher_exact(table, alternative="less").pvalue)
        lo, hi = float(w["ci_low"]), float(w["ci_high"])
        within = f"its class {cls}" if cls is not None else "all images"
        out.append(
            Finding(
                rule="worst_group_accuracy", model=w["model"], cell=w["cell"], metric="accuracy",
                value=acc, ci_low=lo, ci_high=hi, p_value=p, n=n,
                proposed=severity_of("worst_group_gap", ref - acc) if math.isfinite(p) else "info",
                text=(f"{w['model']}: accuracy {_pct(acc)}% [{_pct(lo)}, {_pct(hi)}] on "
                      f"{w['cell']} (n={n}), against {_pct(ref)}% on {within}"),
            )
        )  # fmt: skip
    return out


def _cell_class(inputs: FindingInputs, model: str, cell: str) -> str | None:
    g = inputs.groups
    if "label" not in g.columns:
        return None
    hit = g[(g["model"] == model) & (g["cell"] == cell) & g["label"].notna()]
    return None if hit.empty else str(hit["label"].iloc[0])


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
        excess = inputs.pooled(model, FLIP_EXCESS)
        size = _f(excess["value"]) if excess else fm - rm
        base = (
            f"against {_pct(rm)}% for random patches of the same area"
            if has_baseline
            else "(no random-patch baseline was run)"
        )
        out.append(
            Finding(
                rule="confounder_reliance", model=model, metric=flip, value=fm, ci_low=lo,
                ci_high=hi, p_value=_one_sided_wilcoxon(f - r), n=_n(row),
                proposed=severity_of("flip_excess", size),
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
            Finding(
                rule="degenerate_maps", model=model, value=share, proposed=proposed, text=text,
                n=n,
            )
        )  # fmt: skip
    return out


#: Metrics where a higher value is the worse one (the gap's "worst" end is its top).
HIGHER_IS_WORSE = ("mass:confounder", "flip:confounder", "flip_excess:confounder")


def _higher_is_worse(metric: str) -> bool:
    return metric.split("@")[0] in HIGHER_IS_WORSE


def _ends(row: Mapping[Hashable, Any]) -> tuple[str, float, str, float]:
    """(worst cell, its value, best cell, its value), read the right way round."""
    low = (row["worst_cell"], float(row["worst_value"]))
    high = (row["best_cell"], float(row["best_value"]))
    worst, best = (high, low) if _higher_is_worse(str(row["metric"])) else (low, high)
    return (*worst, *best)


def _group_gap(inputs: FindingInputs) -> list[Finding]:
    """Gaps of attention or reliance between group cells of one class (accuracy has its own
    rule; gaps between classes are ``class_difference`` notes)."""
    gaps = inputs.gaps
    if gaps is None or gaps.empty or "p_value" not in gaps.columns:
        return []
    out = []
    for i, row in enumerate(gaps.to_dict("records")):
        gap = float(row["gap"])
        scope = row.get("scope")
        if scope == BETWEEN_CLASSES or row["metric"] == "accuracy" or "@" in str(row["metric"]):
            continue
        if severity_of("group_gap", gap) == "info":
            continue
        worst, wv, best, bv = _ends(row)
        among = f" among {scope}" if scope else ""
        out.append(
            Finding(
                # The value is the gap, not the metric itself: name it so, or the report would
                # print "mass:causal = 0.18" beside a cell whose mass is 0.60.
                rule="group_gap", model=row["model"], metric=f"gap in {row['metric']}",
                value=gap, p_value=float(row["p_value"]), proposed=severity_of("group_gap", gap),
                source=("gaps", i), cell=worst,
                text=(f"{row['model']}: {row['metric']}{among} is {wv:.2f} on {worst} against "
                      f"{bv:.2f} on {best}, a gap of {gap:.2f} across {int(row['n_cells'])} "
                      "cells"),
            )
        )  # fmt: skip
    return out


def _class_difference(inputs: FindingInputs) -> list[Finding]:
    """Differences between the classes themselves: context, never a group bias."""
    gaps = inputs.gaps
    if gaps is None or gaps.empty or "scope" not in gaps.columns:
        return []
    out = []
    for i, row in enumerate(gaps.to_dict("records")):
        gap = _f(row.get("gap"))
        if row.get("scope") != BETWEEN_CLASSES or "@" in str(row["metric"]):
            continue
        if severity_of("group_gap", gap) == "info":
            continue
        out.append(
            Finding(
                rule="class_difference", kind="info", model=row["model"],
                metric=f"gap in {row['metric']}", value=gap, p_value=_f(row.get("p_value")),
                source=("gaps", i), proposed="info",
                text=(f"{row['model']}: {row['metric']} differs between classes, from "
                      f"{row['worst_value']:.2f} ({row['worst_cell']}) to "
                      f"{row['best_value']:.2f} ({row['best_cell']}); a class effect, not a "
                      "group bias"),
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
            rule="small_cells", kind="info", model=None, value=float(len(small)),
            text=(f"{len(small)} cell(s) below the minimum group size of "
                  f"{inputs.min_group_size}: {'; '.join(small)}; shown without interval or "
                  "verdict"),
        )
    ]  # fmt: skip


#: Every rule, in the order their findings are drafted.
RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule(
            "confounder_attention",
            ("confounder_mass", "confounder_lift"),
            _confounder_attention,
            "risk",
            "mean share of attention on the confounder regions, and that share over the "
            "regions' share of the image (pooled lift). Severity: the more severe of the mass "
            "(counted only when the lift is at least 1.25) and the lift's lower 95% bound "
            f"(counted only when the mass is at least {MIN_CONFOUNDER_MASS:.0%})",
        ),
        Rule(
            "confounder_reliance",
            ("flip_excess",),
            _confounder_reliance,
            "risk",
            "flip rate when the confounder regions are occluded minus the rate for random "
            "patches of the same area (one-sided Wilcoxon over images)",
        ),
        Rule(
            "attention_elsewhere",
            ("causal_shortfall",),
            _attention_elsewhere,
            "risk",
            "attention that leaves the causal regions: 1 minus the upper 95% bound of the "
            "causal lift (a uniform map has lift 1)",
        ),
        Rule(
            "worst_group_accuracy",
            ("worst_group_gap",),
            _worst_group_accuracy,
            "risk",
            "accuracy of the worst cell against the rest of its own class (one-sided Fisher "
            "exact test), so a harder class is not a group's risk",
        ),
        Rule(
            "group_gap",
            ("group_gap",),
            _group_gap,
            "risk",
            "largest gap of attention or reliance between group cells inside one class "
            "(permutation test)",
        ),
        Rule(
            "degenerate_maps",
            ("invalid_maps",),
            _degenerate_maps,
            "risk",
            "share of a model's images whose map is all zero or not finite (no test)",
        ),
        Rule(
            "class_difference",
            ("group_gap",),
            _class_difference,
            "info",
            "gap of accuracy, attention or reliance between the classes themselves: a class "
            "effect, always info",
        ),
        Rule(
            "small_cells",
            (),
            _small_cells,
            "info",
            "cells below the minimum group size, shown without interval or verdict",
        ),
    )
}


def rules_table() -> str:
    """The Markdown table of every rule, its kind, what it measures and its thresholds: the
    README shows it verbatim (a test keeps the two equal)."""
    lines = [
        "| rule | kind | measures | high | medium | low |",
        "|---|---|---|---|---|---|",
    ]
    for r in RULES.values():
        limits: dict[str, list[str]] = {}
        for t in r.thresholds:
            for level in ("high", "medium", "low"):
                if level in THRESHOLDS[t]:
                    limits.setdefault(level, []).append(f"{t} ≥ {THRESHOLDS[t][level]:g}")
        cells = ["; ".join(limits.get(level, [])) or "–" for level in ("high", "medium", "low")]
        lines.append(f"| `{r.name}` | {r.kind} | {r.description} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Whether a higher value of a compared metric is better for the model.
BETTER_HIGHER = {"accuracy": True, "mass:causal": True, "mass:confounder": False,
                 "flip:confounder": False}  # fmt: skip


def model_changes(comparisons: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Changes between models over all images (the ``all`` cell of ``comparisons``), worded
    as changes and marked ``better`` / ``worse`` / ``same`` for the later model: never a risk
    of the better one. ``same`` when the Holm-adjusted p-value is not below ``ALPHA``."""
    if comparisons is None or comparisons.empty:
        return []
    out = []
    for row in comparisons.to_dict("records"):
        metric = str(row["metric"])
        if row.get("cell") != "all" or metric.split("@")[0] not in BETTER_HIGHER:
            continue
        # The table holds a - b; a change reads from a to b.
        diff = -_f(row["mean_diff"])
        lo, hi = -_f(row["ci_high"]), -_f(row["ci_low"])
        p = _f(row.get("p_adjusted", row.get("p_value")))
        significant = math.isfinite(p) and p < ALPHA and not (lo <= 0 <= hi)
        up = BETTER_HIGHER[metric.split("@")[0]]
        direction = "same" if not significant else ("better" if (diff > 0) == up else "worse")
        a, b = row["model_a"], row["model_b"]
        out.append({
            "model_a": a, "model_b": b, "metric": metric, "cell": "all", "diff": diff,
            "ci_low": lo, "ci_high": hi, "p_value": p, "n": int(row["n"]),
            "direction": direction,
            "text": f"{b} vs {a}: {metric} {diff:+.2f} [{lo:+.2f}, {hi:+.2f}]"
            + ("" if significant else " (no significant change)"),
        })  # fmt: skip
    return out


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
