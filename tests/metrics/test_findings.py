import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from bias_audit.core.findings import (
    RULES,
    THRESHOLDS,
    Finding,
    FindingInputs,
    draft_findings,
    settle_findings,
)
from bias_audit.core.stats import group_stats, worst_group


def _inputs(map_counts=None):
    rng = np.random.default_rng(0)
    n = 80
    s = pd.DataFrame(
        {"model": "m", "id": [f"i{i}" for i in range(n)], "g": np.repeat(["u", "v"], n // 2),
         "label": np.tile(["a", "b"], n // 2), "correct": rng.random(n) < 0.8,
         "mass:confounder": rng.uniform(0.3, 0.9, n), "area:confounder": rng.uniform(0.1, 0.2, n)}
    )  # fmt: skip
    s["pred"] = np.where(s["correct"], s["label"], np.where(s["label"] == "a", "b", "a"))
    groups = group_stats(
        s, groups=["g"], metrics=["mass:confounder", "area:confounder"], min_group_size=5,
        n_boot=200, seed=3,
    )  # fmt: skip
    return s, groups, FindingInputs(
        samples=s, groups=groups, worst=worst_group(groups), roles={"confounder": ("hair",)},
        min_group_size=5, map_counts=map_counts or {},
    )  # fmt: skip


def test_every_rule_is_a_record_with_known_thresholds():
    for name, rule in RULES.items():
        assert rule.name == name and all(t in THRESHOLDS for t in rule.thresholds)


def test_findings_restate_the_groups_table():
    s, groups, inputs = _inputs()
    drafts = draft_findings(inputs)
    assert all(isinstance(f, Finding) for f in drafts)
    pooled = groups[groups["cell"] == "all"].set_index("metric")
    conf = next(f for f in drafts if f.rule == "confounder_attention")
    row = pooled.loc["mass:confounder"]
    assert (conf.value, conf.ci_low, conf.ci_high) == (row["value"], row["ci_low"], row["ci_high"])
    worst = next(f for f in drafts if f.rule == "worst_group_accuracy")
    cell = groups[(groups["cell"] == worst.cell) & (groups["metric"] == "accuracy")].iloc[0]
    assert (worst.value, worst.ci_low, worst.ci_high) == (
        cell["value"],
        cell["ci_low"],
        cell["ci_high"],
    )
    assert worst.value == min(part["correct"].mean() for _, part in s.groupby(["g", "label"]))


def test_mostly_invalid_maps_are_a_high_finding_and_json_shape():
    _, _, inputs = _inputs({"m": (30, 40), "ok": (1, 40)})
    settled = settle_findings(draft_findings(inputs))
    bad = {f.model: f for f in settled if f.rule == "degenerate_maps"}
    assert bad["m"].severity == "high" and bad["m"].value == 0.75
    assert bad["ok"].severity == "info" and bad["ok"].value == 1 / 40
    assert settled[0].severity == "high"  # sorted by severity
    d = bad["m"].to_dict()
    assert list(d) == ["rule", "kind", "severity", "model", "cell", "metric", "value", "ci_low",
                       "ci_high", "p_value", "p_adjusted", "n", "text"]  # fmt: skip
    assert d["kind"] == "risk" and d["n"] == 40
    back = Finding.from_dict({**d, "ci_low": None})
    assert (
        math.isnan(back.ci_low)
        and dataclasses.replace(back, ci_low=d["ci_low"]).to_dict().keys() == d.keys()
    )


def test_an_effect_not_significant_after_holm_is_info():
    f = Finding(rule="x", model="m", proposed="high", p_value=0.01, p_adjusted=0.2, text="t")
    (out,) = settle_findings([f])
    assert out.severity == "info" and "not significant" in out.text
    (out,) = settle_findings([dataclasses.replace(f, p_adjusted=0.01)])
    assert out.severity == "high"
    assert pytest.approx(0.01) == out.p_adjusted


# -- issue 12: kinds, changes, verdicts ---------------------------------------------------------


def test_the_readme_rules_table_is_the_registrys():
    from pathlib import Path

    from bias_audit.core.findings import rules_table

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- rules-table -->\n", "\n<!-- /rules-table -->"
    shown = readme[readme.index(start) + len(start) : readme.index(end)]
    assert shown == rules_table()
    assert all(f"`{name}`" in shown for name in RULES)


def _groups(model, rows):
    """A groups table of ``all`` cells: rows = {metric: (value, ci_low, ci_high, n_valid)}."""
    return pd.DataFrame([
        {"model": model, "cell": "all", "metric": k, "value": v, "ci_low": lo, "ci_high": hi,
         "n": n, "n_valid": n, "small": False}
        for k, (v, lo, hi, n) in rows.items()
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("value", "lo", "hi", "n", "status"),
    [
        (0.20, 0.15, 0.25, 50, "pass"),  # within the limit
        (0.35, 0.25, 0.45, 50, "concern"),  # beyond it, the interval crosses it
        (0.45, 0.40, 0.50, 50, "fail"),  # the whole interval beyond it
        (0.35, math.nan, math.nan, 5, "concern"),  # beyond it, no interval
        (math.nan, math.nan, math.nan, 0, "no_data"),
    ],
)
def test_an_upper_limit_is_judged_on_its_interval(value, lo, hi, n, status):
    from bias_audit.core.verdicts import judge_criteria

    groups = _groups("m", {"mass:confounder": (value, lo, hi, n)})
    worst = worst_group(groups)
    crit, missing = judge_criteria(groups, worst, "m", {"max_confounder_mass": 0.30})
    assert missing == [] and crit[0]["status"] == status
    assert crit[0]["limit"] == 0.30 and crit[0]["n"] == n


def test_worst_group_accuracy_is_judged_from_its_favourable_end():
    from bias_audit.core.verdicts import judge_criteria, verdicts

    cells = pd.DataFrame([
        {"model": "m", "cell": c, "metric": "accuracy", "value": v, "ci_low": lo,
         "ci_high": hi, "n": 40, "n_valid": 40, "small": False}
        for c, v, lo, hi in (("all", 0.9, 0.85, 0.94), ("u / a", 0.7, 0.55, 0.82),
                             ("v / a", 0.95, 0.83, 0.99))
    ])  # fmt: skip
    worst = worst_group(cells)
    crit, _ = judge_criteria(cells, worst, "m", {"min_worst_group_accuracy": 0.8})
    # 0.70 < 0.80 but the interval reaches 0.82: a concern, on the worst cell
    assert (crit[0]["status"], crit[0]["cell"], crit[0]["value"]) == ("concern", "u / a", 0.7)
    crit, _ = judge_criteria(cells, worst, "m", {"min_worst_group_accuracy": 0.85})
    assert crit[0]["status"] == "fail"
    # the model's status: fail beats concern beats pass; unmeasured criteria become caveats
    v = verdicts(cells, worst, ["m"], {"min_worst_group_accuracy": 0.8, "max_flip_excess": 0.1})
    assert v[0]["status"] == "concern"
    assert [c["code"] for c in v[0]["caveats"]] == ["not_measured"]
    assert "max_flip_excess" in v[0]["caveats"][0]["text"]


def test_changes_are_worded_as_changes_with_a_direction():
    from bias_audit.core.findings import model_changes

    comparisons = pd.DataFrame([
        # a - b: b is 0.24 more accurate, and has 0.2 less confounder mass
        {"model_a": "biased", "model_b": "debiased", "cell": "all", "metric": "accuracy",
         "n": 100, "mean_diff": -0.24, "ci_low": -0.28, "ci_high": -0.20, "p_value": 1e-6,
         "p_adjusted": 1e-5},
        {"model_a": "biased", "model_b": "debiased", "cell": "all", "metric": "mass:confounder",
         "n": 100, "mean_diff": 0.20, "ci_low": 0.15, "ci_high": 0.25, "p_value": 1e-6,
         "p_adjusted": 1e-5},
        {"model_a": "biased", "model_b": "debiased", "cell": "all", "metric": "mass:causal",
         "n": 100, "mean_diff": 0.01, "ci_low": -0.02, "ci_high": 0.04, "p_value": 0.4,
         "p_adjusted": 0.9},
        {"model_a": "biased", "model_b": "debiased", "cell": "x / y", "metric": "accuracy",
         "n": 10, "mean_diff": 0.5, "ci_low": 0.1, "ci_high": 0.9, "p_value": 0.01,
         "p_adjusted": 0.02},
    ])  # fmt: skip
    changes = {c["metric"]: c for c in model_changes(comparisons)}
    assert set(changes) == {"accuracy", "mass:confounder", "mass:causal"}
    acc = changes["accuracy"]
    assert acc["diff"] == pytest.approx(0.24) and (acc["ci_low"], acc["ci_high"]) == (0.20, 0.28)
    assert acc["direction"] == "better"
    assert acc["text"] == "debiased vs biased: accuracy +0.24 [+0.20, +0.28]"
    assert changes["mass:confounder"]["direction"] == "better"  # less confounder attention
    assert changes["mass:causal"]["direction"] == "same"


def test_a_class_effect_is_info_and_a_within_class_gap_a_risk():
    from bias_audit.core.findings import BETWEEN_CLASSES

    s, groups, inputs = _inputs()
    gaps = pd.DataFrame([
        {"model": "m", "metric": "mass:confounder", "n_cells": 2, "worst_cell": "a",
         "worst_value": 0.2, "best_cell": "b", "best_value": 0.5, "gap": 0.3, "p_value": 0.001,
         "scope": BETWEEN_CLASSES},
        {"model": "m", "metric": "mass:confounder", "n_cells": 2, "worst_cell": "u / a",
         "worst_value": 0.3, "best_cell": "v / a", "best_value": 0.42, "gap": 0.12,
         "p_value": 0.001, "scope": "a"},
    ])  # fmt: skip
    inputs = dataclasses.replace(inputs, gaps=gaps)
    drafts = [f for f in draft_findings(inputs) if f.rule in ("group_gap", "class_difference")]
    by_rule = {f.rule: f for f in drafts}
    assert by_rule["class_difference"].kind == "info"
    assert by_rule["class_difference"].proposed == "info"
    gap = by_rule["group_gap"]
    assert gap.kind == "risk" and gap.proposed == "high" and gap.value == 0.12
    # higher confounder mass is the worse end: the worst cell is v / a, read the right way
    assert gap.cell == "v / a" and "among a is 0.42 on v / a against 0.30 on u / a" in gap.text
