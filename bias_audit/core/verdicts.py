"""Verdicts: one status per model from the gate's limits, and the scoreboard beside it.

Every number is read from the audit's tables (``groups.parquet``'s ``all`` cell and the
worst-group table), so a verdict, the scoreboard, ``bias-audit check`` and the report state the
same value and interval. A criterion is judged on its interval:

- ``pass``: the point estimate is within the limit;
- ``concern``: the estimate is beyond the limit but the 95% interval crosses it (or there is
  no interval: too few images);
- ``fail``: the whole interval lies beyond the limit;
- ``no_data``: the model has no valid value (counts as a fail: a broken model must not pass).

A criterion whose metric the run did not measure at all (no confounder regions, interventions
off) is left out and named in the model's caveats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pandas as pd

from bias_audit.core._naming import CONFOUNDER, column
from bias_audit.core.findings import FLIP_EXCESS, POOLED_LIFT, SEVERITIES
from bias_audit.core.stats import ALL_CELL

__all__ = [
    "CRITERIA",
    "GATE_DEFAULTS",
    "judge_criteria",
    "scoreboard",
    "verdicts",
    "with_trust_caveats",
]

#: name -> (label, groups metric or "worst", upper limit?)
CRITERIA: dict[str, tuple[str, str, bool]] = {
    "max_confounder_mass": ("Attention on confounders", column("mass", CONFOUNDER), True),
    "max_confounder_lift": ("Confounder lift", f"{POOLED_LIFT}:{CONFOUNDER}", True),
    "max_flip_excess": ("Flip rate above random patches", FLIP_EXCESS, True),
    "max_flip_rate": ("Flip rate when confounders are occluded", column("flip", CONFOUNDER), True),
    "min_worst_group_accuracy": ("Worst-group accuracy", "worst", False),
}

#: The ``[gate]`` defaults (see :class:`bias_audit.core.config.GateConfig`).
GATE_DEFAULTS = {
    "max_confounder_mass": 0.30,
    "max_confounder_lift": 2.0,
    "max_flip_excess": 0.10,
    "min_worst_group_accuracy": 0.80,
}


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _first(hit: pd.DataFrame) -> dict[str, Any]:
    # Column names are strings, so the row's keys are too.
    return cast("dict[str, Any]", hit.iloc[0].to_dict())


def _pooled(groups: pd.DataFrame, model: str, metric: str) -> dict[str, Any] | None:
    hit = groups[
        (groups["model"] == model) & (groups["cell"] == ALL_CELL) & (groups["metric"] == metric)
    ]
    return None if hit.empty else _first(hit)


def _interval(row: Mapping[str, Any] | None) -> dict[str, Any]:
    if row is None:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    n = _f(row.get("n_valid"))
    return {
        "value": _f(row.get("value")),
        "ci_low": _f(row.get("ci_low")),
        "ci_high": _f(row.get("ci_high")),
        "n": int(n) if math.isfinite(n) else 0,
    }


def _status(value: float, lo: float, hi: float, n: int, limit: float, *, upper: bool) -> str:
    if n == 0 or not math.isfinite(value):
        return "no_data"
    if (value <= limit) if upper else (value >= limit):
        return "pass"
    bound = lo if upper else hi  # the end of the interval in the model's favour
    if math.isfinite(bound) and ((bound > limit) if upper else (bound < limit)):
        return "fail"
    return "concern"


def judge_criteria(
    groups: pd.DataFrame, worst: pd.DataFrame, model: str, limits: Mapping[str, float]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each limit of ``limits`` judged for ``model``: ``(criteria, not measured names)``.

    Args:
        groups: the groups table (``all`` cell rows are read).
        worst: ``stats.worst_group`` over ``groups``.
        model: the model's name.
        limits: criterion name (a key of :data:`CRITERIA`) -> limit.
    """
    out, missing = [], []
    for name, limit in limits.items():
        label, metric, upper = CRITERIA[name]
        if metric == "worst":
            hit = worst[(worst["model"] == model) & (worst["metric"] == "accuracy")]
            w = _first(hit) if len(hit) else {}
            row = _interval(w if w.get("n_cells") else None)
            cell = w.get("cell") if w.get("n_cells") else None
        else:
            if not (groups["metric"] == metric).any():
                missing.append(name)
                continue
            row, cell = _interval(_pooled(groups, model, metric)), None
        status = _status(
            row["value"], row["ci_low"], row["ci_high"], row["n"], float(limit), upper=upper
        )
        out.append({
            "name": name, "label": label, **row, "limit": float(limit), "cell": cell,
            "status": status,
        })  # fmt: skip
    return out, missing


def _overall(criteria: Sequence[Mapping[str, Any]]) -> str:
    statuses = {c["status"] for c in criteria}
    if statuses & {"fail", "no_data"}:
        return "fail"
    return "concern" if "concern" in statuses else "pass"


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.0f}%"


def _headline(
    groups: pd.DataFrame,
    model: str,
    criteria: Sequence[Mapping[str, Any]],
    confounders: Sequence[str],
) -> str:
    by = {c["name"]: c for c in criteria}
    names = ", ".join(confounders) or "the confounders"
    parts = []
    mass = _interval(_pooled(groups, model, column("mass", CONFOUNDER)))
    area = _interval(_pooled(groups, model, column("area", CONFOUNDER)))
    if math.isfinite(mass["value"]):
        parts.append(
            f"{_pct(mass['value'])} of attention on {names} ({_pct(area['value'])} of the image)"
        )
    flip = _interval(_pooled(groups, model, column("flip", CONFOUNDER)))
    rand = _interval(_pooled(groups, model, column("flip_random", CONFOUNDER)))
    if math.isfinite(flip["value"]):
        base = f" (random patches {_pct(rand['value'])})" if math.isfinite(rand["value"]) else ""
        parts.append(f"occluding them flips {_pct(flip['value'])} of predictions{base}")
    w = by.get("min_worst_group_accuracy")
    if w and math.isfinite(w["value"]):
        parts.append(f"worst group {w['cell']} at {_pct(w['value'])} accuracy")
    failing = [c["label"].lower() for c in criteria if c["status"] in ("fail", "no_data")]
    lead = (
        f"Fails on {', '.join(failing)}: " if failing else "Within every limit: "
    ) if criteria else ""  # fmt: skip
    return (lead + "; ".join(parts) + ".") if parts else lead.rstrip(": ") + "."


def _top_finding(findings: Sequence[Mapping[str, Any]], model: str) -> dict[str, Any] | None:
    risks = [
        f for f in findings
        if f.get("model") == model and f.get("kind", "risk") == "risk"
        and f.get("severity") in ("high", "medium", "low")
    ]  # fmt: skip
    if not risks:
        return None
    top = min(risks, key=lambda f: SEVERITIES.index(f["severity"]))
    return {"rule": top["rule"], "severity": top["severity"], "text": top["text"]}


def verdicts(
    groups: pd.DataFrame,
    worst: pd.DataFrame,
    models: Sequence[str],
    limits: Mapping[str, float],
    *,
    findings: Sequence[Mapping[str, Any]] = (),
    warnings: Sequence[Mapping[str, Any]] = (),
    confounders: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One verdict per model (``summary.json`` ``verdicts``): status, headline, criteria,
    top finding and caveats (the run's warnings about this model or about every model)."""
    out = []
    for model in models:
        criteria, missing = judge_criteria(groups, worst, model, limits)
        caveats = [
            {"code": w["code"], "text": w["text"]}
            for w in warnings
            if w.get("model") in (None, model)
        ]
        caveats.extend(
            {"code": "not_measured", "text": f"{CRITERIA[m][0]} ({m}) was not measured in this run"}
            for m in missing
        )
        out.append({
            "model": model, "status": _overall(criteria),
            "headline": _headline(groups, model, criteria, confounders),
            "criteria": criteria, "top_finding": _top_finding(findings, model),
            "caveats": caveats,
        })  # fmt: skip
    return out


def with_trust_caveats(
    verdicts: Sequence[Mapping[str, Any]], trust_findings: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The verdicts with a caveat for each failed trust check of medium or high severity.

    A failed check does not change the status (the criteria decide it); it says that the
    attention numbers behind the status rest on maps that did not pass that check.
    """
    out = []
    for v in verdicts:
        caveats = list(v.get("caveats", ()))
        for f in trust_findings:
            if f.get("model") == v["model"] and f.get("severity") in ("medium", "high"):
                code = f"trust_{f.get('code', 'check')}"
                caveats.append({"code": code, "text": str(f.get("text", "")), "link": "#trust"})
        out.append({**v, "caveats": caveats})
    return out


def scoreboard(
    groups: pd.DataFrame,
    worst: pd.DataFrame,
    models: Sequence[str],
    *,
    findings: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The models side by side (``summary.json`` ``scoreboard``), each number with its interval
    and n as in ``groups.parquet``."""
    out = []
    for model in models:
        hit = worst[(worst["model"] == model) & (worst["metric"] == "accuracy")]
        w = _first(hit) if len(hit) else {}
        top = _top_finding(findings, model)
        out.append({
            "model": model,
            "accuracy": _interval(_pooled(groups, model, "accuracy")),
            "worst_group_accuracy": {
                "cell": w.get("cell") if w.get("n_cells") else None,
                **_interval(w if w.get("n_cells") else None),
            },
            "confounder_mass": _interval(_pooled(groups, model, column("mass", CONFOUNDER))),
            "confounder_lift": _interval(_pooled(groups, model, f"{POOLED_LIFT}:{CONFOUNDER}")),
            "flip_rate": _interval(_pooled(groups, model, column("flip", CONFOUNDER))),
            "flip_rate_random": _interval(
                _pooled(groups, model, column("flip_random", CONFOUNDER))
            ),
            "flip_excess": _interval(_pooled(groups, model, FLIP_EXCESS)),
            "top_finding": top["text"] if top else None,
        })  # fmt: skip
    return out
