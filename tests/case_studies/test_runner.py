"""The case study runner: acceptance checks on constructed tables, settings files, and the quick
nurse/doctor case study end to end through the CLI (the slowest test of the suite)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import bias_audit.case_studies as cs
from bias_audit.case_studies import check_acceptance, load_expected, run_case_study
from bias_audit.case_studies._runner import train_plan
from bias_audit.errors import ConfigError, RunError
from bias_audit.io._resources import resource_dir

REPO = Path(__file__).resolve().parents[2]
SHIPPED = resource_dir("case_studies") / "nurse_doctor"
CELLS = ("male / doctor", "female / nurse", "female / doctor", "male / nurse")
MODELS = ("biased", "debiased_data", "debiased_penalty")


def tables(acc: dict[str, dict[str, float]], overall: dict[str, dict[str, float]], p: float):
    """A groups table (accuracy per cell, metric means in cell "all") and a comparisons table."""
    rows = [
        {"model": m, "cell": c, "metric": "accuracy", "value": v}
        for m, cells in acc.items()
        for c, v in cells.items()
    ]
    rows += [
        {"model": m, "cell": "all", "metric": k, "value": v}
        for m, metrics in overall.items()
        for k, v in metrics.items()
    ]
    comparisons = pd.DataFrame(
        [
            {
                "model_a": "biased",
                "model_b": m,
                "cell": "all",
                "metric": "mass:confounder",
                "p_value": p / 10,
                "p_adjusted": p,
            }
            for m in MODELS[1:]
        ]  # fmt: skip
    )
    return pd.DataFrame(rows), comparisons


# The occlusion criterion's column: the shipped [occlusion] region (a region or a role), and its
# random-patch baseline.
FLIP = "flip:" + load_expected(SHIPPED / "expected.toml")["occlusion"]["region"]
RANDOM = FLIP.replace("flip:", "flip_random:")


def passing():
    acc = {
        "biased": dict(zip(CELLS, (0.97, 0.96, 0.40, 0.75), strict=True)),
        "debiased_data": dict.fromkeys(CELLS, 0.95),
        "debiased_penalty": dict.fromkeys(CELLS, 0.90),
    }
    overall = {
        # flips .45 - .35 = .10 over random patches: the shipped limit
        "biased": {"mass:confounder": 0.30, "mass:causal": 0.2, FLIP: 0.45, RANDOM: 0.35},
        "debiased_data": {"mass:confounder": 0.15, "mass:causal": 0.6, FLIP: 0.15, RANDOM: 0.1},
        "debiased_penalty": {"mass:confounder": 0.05, "mass:causal": 0.5, FLIP: 0.0, RANDOM: 0.1},
    }
    return acc, overall


def by_key(checks):
    return {(c.model, c.name): c for c in checks}


def test_acceptance_passes_at_the_limits():
    expected = load_expected(SHIPPED / "expected.toml")
    assert expected["margin"] == 0.03  # tested on its own below
    expected["margin"] = 0.0
    acc, overall = passing()
    checks = check_acceptance(*tables(acc, overall, p=0.0009), expected)
    # 4 biased cells and its balanced accuracy, 4 cells x 2 debiased models, the biased model's
    # flips over random patches, 5 attention/occlusion checks per debiased model; the occlusion
    # checks read the column of [occlusion] region (FLIP)
    assert len(checks) == 5 + 8 + 1 + 10
    assert all(c.passed for c in checks), [c.line for c in checks if not c.passed]
    got = by_key(checks)
    ratio = got[("biased vs debiased_data", "mass:confounder ratio")]
    assert ratio.value == pytest.approx(2.0) and ratio.op == ">="
    assert (
        got[("biased vs debiased_data", "mass:confounder paired p, biased above")].value == 0.0009
    )
    assert got[("debiased_data", "mass:causal - mass:confounder")].value == pytest.approx(0.45)
    assert got[("biased vs debiased_data", f"{FLIP} ratio")].value == pytest.approx(3.0)
    diff = got[("biased vs debiased_data", f"{FLIP} difference")]
    assert diff.value == pytest.approx(0.30)
    over = got[("biased", f"{FLIP} - random patch")]
    assert over.value == pytest.approx(0.10) and over.limit == 0.10
    # a debiased model that never flips: infinite ratio, which passes
    assert math.isinf(got[("biased vs debiased_penalty", f"{FLIP} ratio")].value)


def test_acceptance_fails_each_criterion_by_name():
    expected = load_expected(SHIPPED / "expected.toml")
    expected["margin"] = 0.0
    acc, overall = passing()
    acc["biased"]["female / nurse"] = 0.79  # below .80 on a stereotypical cell
    acc["biased"]["male / nurse"] = 0.76  # above .75 on a counter-stereotypical cell
    acc["debiased_penalty"]["female / doctor"] = 0.87  # below its own floor, .88
    overall["debiased_data"]["mass:confounder"] = 0.28  # ratio 1.07
    overall["debiased_penalty"]["mass:causal"] = 0.05  # causal == confounder: not greater
    overall["debiased_data"][FLIP] = 0.44  # diff .01, ratio 1.02
    del overall["debiased_penalty"][FLIP]  # missing: NaN fails
    overall["biased"][RANDOM] = 0.36  # flips .09 over random patches
    checks = check_acceptance(*tables(acc, overall, p=0.02), expected)
    failed = {(c.model, c.name) for c in checks if not c.passed}
    assert failed == {
        ("biased", "accuracy [female / nurse]"),
        ("biased", "accuracy [male / nurse]"),
        ("debiased_penalty", "accuracy [female / doctor]"),
        ("biased", f"{FLIP} - random patch"),
        ("biased vs debiased_data", "mass:confounder ratio"),
        ("biased vs debiased_data", "mass:confounder paired p, biased above"),
        ("biased vs debiased_penalty", "mass:confounder paired p, biased above"),
        ("debiased_penalty", "mass:causal - mass:confounder"),
        ("biased vs debiased_data", f"{FLIP} ratio"),
        ("biased vs debiased_data", f"{FLIP} difference"),
        ("biased vs debiased_penalty", f"{FLIP} ratio"),
        ("biased vs debiased_penalty", f"{FLIP} difference"),
    }
    nan = by_key(checks)[("biased vs debiased_penalty", f"{FLIP} difference")]
    assert math.isnan(nan.value) and "n/a" in nan.line and nan.line.startswith("FAIL")


def test_margin_balanced_accuracy_floors_by_model_and_flip_over_random():
    expected = {
        "margin": 0.03,
        "cells": {"stereotypical": list(CELLS[:2]), "counter_stereotypical": list(CELLS[2:])},
        "biased": {"model": "biased", "min_accuracy_stereotypical": 0.80,
                   "max_accuracy_counter_stereotypical": 0.75, "max_balanced_accuracy": 0.85},
        "debiased": {"models": list(MODELS[1:]),
                     "min_accuracy_every_cell": {"debiased_data": 0.90, "debiased_penalty": 0.88}},
        "attention": {"min_confounder_mass_ratio": 2.0, "max_p_value": 0.001,
                      "min_causal_minus_confounder": 0.0},
        "occlusion": {"region": "confounder", "min_flip_ratio": 3.0, "min_flip_difference": 0.05,
                      "min_flip_over_random": 0.10},
    }  # fmt: skip
    acc = {
        # balanced (.97 + .96 + .62 + .72) / 4 = .8175: .0325 under .85
        "biased": dict(zip(CELLS, (0.97, 0.96, 0.62, 0.72), strict=True)),
        "debiased_data": dict.fromkeys(CELLS, 0.93),
        "debiased_penalty": dict.fromkeys(CELLS, 0.91),  # .88 + .03: its own floor
    }
    flip, rand = "flip:confounder", "flip_random:confounder"
    overall = {
        "biased": {"mass:confounder": 0.406, "mass:causal": 0.5, flip: 0.33, rand: 0.20},
        "debiased_data": {"mass:confounder": 0.2, "mass:causal": 0.6, flip: 0.06, rand: 0.05},
        "debiased_penalty": {"mass:confounder": 0.05, "mass:causal": 0.5, flip: 0.0, rand: 0.0},
    }
    got = by_key(check_acceptance(*tables(acc, overall, p=0.0009), expected))
    assert all(c.passed for c in got.values()), [c.line for c in got.values() if not c.passed]
    bal = got[("biased", "balanced accuracy")]
    assert bal.value == pytest.approx(0.8175) and bal.margin == 0.03 and "(margin 0.03)" in bal.line
    over = got[("biased", "flip:confounder - random patch")]
    assert over.value == pytest.approx(0.13) and over.limit == 0.10
    assert got[("biased vs debiased_data", "mass:confounder ratio")].value == pytest.approx(2.03)
    # p-values get no margin: .0009 passes .001
    assert got[("biased vs debiased_data", "mass:confounder paired p, biased above")].margin == 0.0
    # Inside the margin fails, though within the limit; each floor is the model's own.
    acc["biased"]["male / nurse"] = 0.73  # <= .75 but not <= .72; balanced .82 still passes
    acc["debiased_penalty"]["male / doctor"] = 0.905  # above .88, not by .03
    acc["debiased_data"]["female / doctor"] = 0.91  # above .90, not by .03
    overall["biased"][rand] = 0.24  # flips .09 over random
    overall["debiased_data"]["mass:confounder"] = 0.2005  # ratio 2.025
    failed = {(c.model, c.name) for c in check_acceptance(*tables(acc, overall, p=0.0009),
                                                          expected) if not c.passed}  # fmt: skip
    assert failed == {
        ("biased", "accuracy [male / nurse]"),
        ("debiased_penalty", "accuracy [male / doctor]"),
        ("debiased_data", "accuracy [female / doctor]"),
        ("biased", "flip:confounder - random patch"),
        ("biased vs debiased_data", "mass:confounder ratio"),
    }


def test_occlusion_criterion_defaults_to_the_confounder_role():
    expected = load_expected(SHIPPED / "expected.toml")
    del expected["occlusion"]["region"]
    acc, overall = passing()
    for values in overall.values():
        values["flip:hair"] = values.pop(FLIP)  # a region column the default must ignore
        values["flip:confounder"] = values["flip:hair"]
    overall["debiased_data"]["flip:confounder"] = 0.26  # ratio 1.7: fails
    got = by_key(check_acceptance(*tables(acc, overall, p=0.0009), expected))
    check = got[("biased vs debiased_data", "flip:confounder ratio")]
    assert check.value == pytest.approx(0.45 / 0.26) and not check.passed
    assert ("biased vs debiased_data", "flip:hair ratio") not in got


def test_expected_file_errors_name_the_culprit(tmp_path):
    with pytest.raises(ConfigError, match="expected-numbers file not found"):
        load_expected(tmp_path / "nope.toml")
    text = (SHIPPED / "expected.toml").read_text().replace("min_flip_ratio", "min_flip_rat")
    (tmp_path / "expected.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"\[occlusion\] min_flip_ratio missing"):
        load_expected(tmp_path / "expected.toml")


def test_train_plan_reads_the_shipped_settings(tmp_path):
    data, configs = train_plan(
        SHIPPED / "train.toml", tmp_path / "data", tmp_path / "m", quick=True
    )
    assert list(configs) == list(MODELS)
    assert data["image_size"] == 64
    b, d, p = (configs[m] for m in MODELS)
    assert b.train_manifest == str(tmp_path / "data" / "train_biased" / "manifest.csv")
    assert d.train_manifest.endswith(os.path.join("train_balanced", "manifest.csv"))
    assert p.strategy == "attention_penalty" and p.confounders == ("face", "hair")
    assert b.val_manifest is None and b.out == str(tmp_path / "m" / "biased")
    assert b.image_size == 64
    assert data["n"] == {"test": 320} and data["cues"]["hair_male"][3] > 0.5


def test_quick_tables_override(tmp_path):
    text = (SHIPPED / "train.toml").read_text().split("\n[quick.")[0]  # the shipped ones aside
    path = tmp_path / "train.toml"
    path.write_text(text + "\n[quick.common]\nlr = 0.5\n[quick.models.biased]\nepochs = 2\n")
    _, full = train_plan(path, tmp_path, tmp_path, quick=False)
    _, quick = train_plan(path, tmp_path, tmp_path, quick=True)
    assert quick["biased"].epochs == 2 and full["biased"].epochs != 2
    assert quick["debiased_data"].epochs == full["debiased_data"].epochs
    assert {c.lr for c in quick.values()} == {0.5} and 0.5 not in {c.lr for c in full.values()}


def test_train_plan_errors(tmp_path):
    text = (SHIPPED / "train.toml").read_text()
    bad = tmp_path / "train.toml"
    bad.write_text(text.replace('split = "train_biased"\nstrategy = "erm"', 'strategy = "erm"'))
    with pytest.raises(ConfigError, match=r"\[models.biased\] split"):
        train_plan(bad, tmp_path, tmp_path, quick=False)
    bad.write_text(text + '\n[models.extra]\nsplit = "val"\nout = "x"\n')
    with pytest.raises(ConfigError, match=r"\[models.extra\] out: set by the runner"):
        train_plan(bad, tmp_path, tmp_path, quick=False)
    bad.write_text(text + '\n[models.extra]\nsplit = "val"\nepoch = 3\n')
    with pytest.raises(ConfigError, match=r"\[models.extra\].*'epoch'"):
        train_plan(bad, tmp_path, tmp_path, quick=False)


def test_seed_replaces_every_seed_of_the_settings(tmp_path):
    data, configs = train_plan(SHIPPED / "train.toml", tmp_path, tmp_path, quick=False, seed=7)
    assert data["seed"] == 7 and {c.seed for c in configs.values()} == {7}
    data, configs = train_plan(SHIPPED / "train.toml", tmp_path, tmp_path, quick=False)
    assert data["seed"] == 0 and {c.seed for c in configs.values()} == {0}


def test_a_finished_folder_of_another_seed_is_refused(tmp_path):
    (tmp_path / "case_study.json").write_text(json.dumps({"quick": False, "seed": 0}))
    with pytest.raises(RunError, match="with seed 0, not 2"):
        run_case_study("nurse-doctor", out=tmp_path, seed=2)
    with pytest.raises(ConfigError, match="seed: expected an int >= 0, got -1"):
        run_case_study("nurse-doctor", out=tmp_path, seed=-1)


def test_unknown_case_study_is_named(tmp_path):
    with pytest.raises(ConfigError, match="'nurse-dentist'"):
        run_case_study("nurse-dentist", out=tmp_path)


def test_all_is_complete():
    public = {n for n in vars(cs) if not n.startswith("_")} - {"annotations", "ModuleType"}
    assert public == set(cs.__all__)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_quick_case_study_end_to_end(tmp_path):
    """generate + 3 trainings + audit + report + acceptance, through the CLI, then a re-run."""
    out = tmp_path / "nd"
    cmd = [sys.executable, "-m", "bias_audit", "case-study", "nurse-doctor", "--quick",
           "--out", str(out), "--threads", "1"]  # fmt: skip
    proc = subprocess.run(
        [*cmd, "--strict"], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600
    )
    assert proc.returncode in (0, 1), proc.stderr
    for path in ("data/test/manifest.csv", "models/biased/model.pt", "audit.toml",
                 "audit/config.toml", "audit/samples.parquet", "audit/report.html"):  # fmt: skip
        assert (out / path).is_file(), path
    assert (out / "audit.toml").read_text() == (out / "audit" / "config.toml").read_text()
    info = json.loads((out / "case_study.json").read_text())
    checks = {(c["model"], c["name"]): c for c in info["checks"]}
    assert len(checks) == 24 and all(c["value"] is not None for c in checks.values())
    # --strict: exit 1 exactly when a check failed, each failure printed
    n_failed = sum(not c["passed"] for c in checks.values())
    assert proc.returncode == (1 if n_failed else 0)
    assert f"report: {out / 'audit' / 'report.html'}" in proc.stdout
    assert proc.stdout.count("\n  FAIL ") == n_failed
    # What quick mode reliably shows: the biased model fails the counter-stereotypical cells,
    # the data-debiased model does not, and its attention moved off face and hair.
    assert all(checks[("debiased_data", f"accuracy [{c}]")]["passed"] for c in CELLS)
    for cell in ("female / doctor", "male / nurse"):
        assert checks[("biased", f"accuracy [{cell}]")]["passed"]
    for name in (
        "mass:confounder ratio",
        "mass:confounder paired p, biased above",
        f"{FLIP} ratio",
    ):
        assert checks[("biased vs debiased_data", name)]["passed"], name
    assert checks[("debiased_data", "mass:causal - mass:confounder")]["passed"]
    assert checks[("biased", f"{FLIP} - random patch")]["passed"]
    # the acceptance was judged from the audit's own tables
    groups = pd.read_parquet(out / "audit" / "groups.parquet")
    acc = groups.query("model == 'biased' and cell == 'male / nurse' and metric == 'accuracy'")
    assert checks[("biased", "accuracy [male / nurse]")]["value"] == pytest.approx(
        float(acc["value"].iloc[0])
    )

    # A finished folder is reused, not overwritten: the same table again, nothing retrained.
    stamp = (out / "models" / "biased" / "model.pt").stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "already finished here" in again.stdout
    assert (out / "models" / "biased" / "model.pt").stat().st_mtime_ns == stamp
    table = lambda text: [ln for ln in text.splitlines() if ln.startswith(("  pass", "  FAIL"))]  # noqa: E731
    assert table(again.stdout) == table(proc.stdout)
    # ... and a full run into the quick run's folder is refused by name
    full = subprocess.run(
        cmd[:5] + cmd[6:], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600
    )
    assert full.returncode == 2 and "holds a --quick run" in full.stderr


def test_generator_options_build_cues_and_name_bad_keys():
    from bias_audit.case_studies import nurse_doctor
    from bias_audit.case_studies._runner import generator_options

    got = generator_options(
        {"image_size": 64, "seed": 3, "cues": {"beard": 0.3, "clutter": [1, 2]}}, nurse_doctor
    )
    assert got["image_size"] == 64 and got["seed"] == 3
    assert got["cues"] == nurse_doctor.Cues(beard=0.3, clutter=(1, 2))
    assert generator_options({"n": 8}, nurse_doctor) == {"n": 8}
    with pytest.raises(ConfigError, match=r"\[data\] epochs: unknown key"):
        generator_options({"epochs": 3}, nurse_doctor)
    with pytest.raises(ConfigError, match=r"\[data.cues\] bread: unknown cue"):
        generator_options({"cues": {"bread": 0.3}}, nurse_doctor)
    with pytest.raises(ConfigError, match=r"\[data.cues\]: Cues.hair_male"):
        generator_options({"cues": {"hair_male": [1.0]}}, nurse_doctor)


def test_a_significant_difference_in_the_wrong_direction_fails_the_p_check():
    # The paired test is two-sided: a biased model significantly below the debiased one has
    # a tiny p too, and must not pass the "significantly above" check.
    expected = load_expected(SHIPPED / "expected.toml")
    expected["margin"] = 0.0
    acc, overall = passing()
    overall["debiased_data"]["mass:confounder"] = 2 * overall["biased"]["mass:confounder"]
    checks = by_key(check_acceptance(*tables(acc, overall, p=1e-9), expected))
    check = checks[("biased vs debiased_data", "mass:confounder paired p, biased above")]
    assert check.value == 1.0 and not check.passed
    assert checks[("biased vs debiased_penalty", "mass:confounder paired p, biased above")].passed
