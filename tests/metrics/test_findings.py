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
