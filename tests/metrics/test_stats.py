import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bias_audit.core._naming import cell_name
from bias_audit.core.stats import (
    bootstrap_ci,
    cell_quantiles,
    class_rates,
    fairness_differences,
    group_gaps,
    group_stats,
    holm,
    paired_comparison,
    wilson_interval,
    worst_group,
)
from bias_audit.errors import ConfigError, DataError


def _samples(seed=0, sizes=((30, 25), (40, 8))):
    """Two models on the same images; cell (male, nurse) is small (8 images)."""
    rng = np.random.default_rng(seed)
    rows = []
    i = 0
    for gender, per_label in zip(("female", "male"), sizes, strict=True):
        for lab, n in zip(("doctor", "nurse"), per_label, strict=True):
            for _ in range(n):
                rows.append({"id": f"img{i}", "gender": gender, "label": lab})
                i += 1
    base = pd.DataFrame(rows)
    frames = []
    for model, skill in (("biased", 0.7), ("debiased", 0.9)):
        f = base.copy()
        f["model"] = model
        correct = rng.random(len(f)) < skill
        other = f["label"].map({"doctor": "nurse", "nurse": "doctor"})
        f["pred"] = np.where(correct, f["label"], other)
        f["correct"] = f["pred"] == f["label"]
        hair = rng.beta(2, 5, len(f)) + (0.3 if model == "biased" else 0.0)
        hair[rng.random(len(f)) < 0.1] = np.nan
        f["mass:hair"] = hair
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def test_wilson_matches_scipy_and_hand_value():
    low, high = wilson_interval(8, 10)
    ci = stats.binomtest(8, 10).proportion_ci(method="wilson")
    assert float(low) == pytest.approx(ci.low) and float(high) == pytest.approx(ci.high)
    assert float(low) == pytest.approx(0.4902, abs=1e-4)
    lo, hi = wilson_interval(np.array([0, 5, 3]), np.array([4, 5, 0]), confidence=0.9)
    ref = stats.binomtest(0, 4).proportion_ci(confidence_level=0.9, method="wilson")
    assert lo[0] == pytest.approx(0.0, abs=1e-12) and hi[0] == pytest.approx(ref.high)
    assert hi[1] == pytest.approx(1.0) and np.isnan(lo[2]) and np.isnan(hi[2])
    with pytest.raises(ConfigError, match="confidence"):
        wilson_interval(1, 2, confidence=95)


def test_wilson_coverage_is_about_95_percent():
    rng = np.random.default_rng(0)
    p, n = 0.3, 60
    k = rng.binomial(n, p, size=4000)
    low, high = wilson_interval(k, n)
    coverage = np.mean((low <= p) & (p <= high))
    assert 0.93 <= coverage <= 0.97


def test_bootstrap_coverage_is_about_95_percent():
    rng = np.random.default_rng(1)
    hits = 0
    trials = 300
    for t in range(trials):
        x = rng.normal(2.0, 1.0, size=50)
        low, high = bootstrap_ci(x, n_boot=400, seed=t)
        hits += low <= 2.0 <= high
    assert 0.90 <= hits / trials <= 0.98


def test_bootstrap_ci_edges():
    assert np.isnan(bootstrap_ci([1.0, np.nan])).all()
    low, high = bootstrap_ci([1.0, 2.0, np.nan, 3.0, 4.0], n_boot=200, seed=0)
    assert 1.0 <= low < 2.5 < high <= 4.0
    assert bootstrap_ci(np.arange(30.0), seed=3) == bootstrap_ci(np.arange(30.0), seed=3)
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)


def test_holm_hand_example_with_nan():
    # m = 4 known p-values: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> max so far 0.06
    got = holm([0.01, 0.04, 0.03, np.nan, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, np.nan, 0.02])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]
    assert holm([]).shape == (0,)


def test_group_stats_against_direct_masks():
    s = _samples()
    out = group_stats(s, groups=["gender"], metrics=["mass:hair"], n_boot=200)
    assert list(out.columns) == [
        "model", "cell", "gender", "label", "n", "n_valid", "small", "metric", "value",
        "ci_low", "ci_high",
    ]  # fmt: skip
    for (model, gender, lab), _part in s.groupby(["model", "gender", "label"]):
        mask = (s["model"] == model) & (s["gender"] == gender) & (s["label"] == lab)
        rows = out[(out["model"] == model) & (out["cell"] == f"{gender} / {lab}")]
        acc = rows[rows["metric"] == "accuracy"].iloc[0]
        assert acc["n"] == mask.sum() and acc["gender"] == gender and acc["label"] == lab
        assert acc["value"] == pytest.approx(s.loc[mask, "correct"].mean())
        hair = rows[rows["metric"] == "mass:hair"].iloc[0]
        assert hair["n_valid"] == s.loc[mask, "mass:hair"].notna().sum()
        assert hair["value"] == pytest.approx(s.loc[mask, "mass:hair"].mean())
        other = "nurse" if lab == "doctor" else "doctor"
        tpr = rows[rows["metric"] == f"tpr:{lab}"].iloc[0]
        assert tpr["value"] == pytest.approx((s.loc[mask, "pred"] == lab).mean())
        fpr = rows[rows["metric"] == f"fpr:{other}"].iloc[0]
        assert fpr["value"] == pytest.approx((s.loc[mask, "pred"] == other).mean())
        assert np.isnan(rows[rows["metric"] == f"fpr:{lab}"].iloc[0]["value"])
        small = acc["n"] < 20
        assert acc["small"] == small
        assert np.isnan(acc["ci_low"]) == small and np.isnan(hair["ci_high"]) == (
            hair["n_valid"] < 20
        )
        if not small:
            assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    every = out[(out["cell"] == "all") & (out["metric"] == "accuracy")]
    assert every["n"].tolist() == [103, 103] and every["gender"].isna().all()


def test_group_stats_accuracy_matches_fairlearn():
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import accuracy_score

    s = _samples()
    out = group_stats(s, groups=["gender"], n_boot=10)
    for model, part in s.groupby("model"):
        mf = MetricFrame(
            metrics=accuracy_score,
            y_true=part["label"],
            y_pred=part["pred"],
            sensitive_features=part[["gender", "label"]],
        )
        for (gender, lab), value in mf.by_group.items():
            row = out[(out["model"] == model) & (out["cell"] == f"{gender} / {lab}")]
            assert row[row["metric"] == "accuracy"]["value"].item() == pytest.approx(value)
        row = out[(out["model"] == model) & (out["cell"] == "all")]
        assert row[row["metric"] == "accuracy"]["value"].item() == pytest.approx(mf.overall)


def test_empty_tables_keep_columns_and_dtypes():
    s = _samples()
    full = group_stats(s, groups=["gender"], metrics=["mass:hair"], n_boot=10)
    empty = group_stats(s.iloc[:0], groups=["gender"], metrics=["mass:hair"], n_boot=10)
    assert empty.empty and (empty.dtypes == full.dtypes).all()
    g_full = group_gaps(s, groups=["gender"], metrics=["mass:hair"], n_perm=10, min_group_size=5)
    g_empty = group_gaps(s.iloc[:0], groups=["gender"], metrics=["mass:hair"], n_perm=10)
    assert g_empty.empty and (g_empty.dtypes == g_full.dtypes).all()
    f_full = fairness_differences(s, groups=["gender"])
    f_empty = fairness_differences(s.iloc[:0], groups=["gender"])
    assert f_empty.empty and (f_empty.dtypes == f_full.dtypes).all()


def test_permutation_test_rejects_a_real_gap_and_not_equal_groups():
    rng = np.random.default_rng(0)
    n = 60
    rows = []
    for g, shift in (("a", 0.0), ("b", 0.0), ("c", 0.0)):
        for v in rng.normal(shift, 1.0, n):
            rows.append({"model": "m", "grp": g, "label": "x", "correct": True, "mass:x": v})
    equal = pd.DataFrame(rows)
    gaps = group_gaps(equal, groups=["grp"], metrics=["mass:x"], n_perm=500, seed=0)
    row = gaps[gaps["metric"] == "mass:x"].iloc[0]
    assert row["n_cells"] == 3 and row["p_value"] > 0.05
    assert gaps[gaps["metric"] == "accuracy"]["gap"].item() == 0.0
    unequal = equal.copy()
    unequal.loc[unequal["grp"] == "c", "mass:x"] += 1.0
    unequal.loc[unequal.index[:30], "correct"] = False  # half of group a wrong
    gaps = group_gaps(unequal, groups=["grp"], metrics=["mass:x"], n_perm=500, seed=0)
    row = gaps[gaps["metric"] == "mass:x"].iloc[0]
    assert row["best_cell"] == "c / x" and row["p_value"] < 0.01
    means = unequal.groupby("grp")["mass:x"].mean()
    assert row["gap"] == pytest.approx(means.max() - means.min())
    acc = gaps[gaps["metric"] == "accuracy"].iloc[0]
    assert acc["worst_cell"] == "a / x" and acc["worst_value"] == 0.5 and acc["p_value"] < 0.01


def test_gaps_leave_out_small_cells():
    s = _samples()
    gaps = group_gaps(s, groups=["gender"], n_perm=50)
    assert (gaps["n_cells"] == 3).all()  # male / nurse has 8 < 20
    one = group_gaps(s, groups=["gender"], n_perm=50, min_group_size=35)
    assert (one["n_cells"] == 1).all() and one["p_value"].isna().all()


def test_fairness_differences_against_direct_rates():
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    s = _samples()
    out = fairness_differences(s, groups=["gender", "label"])
    assert set(out["attribute"]) == {"gender", "label", "gender / label"}
    part = s[s["model"] == "biased"]
    rate = (part["pred"] == "doctor").groupby(part["gender"]).mean()
    dp = out[(out["model"] == "biased") & (out["attribute"] == "gender")]
    got = dp.set_index("metric")["value"]
    assert got["demographic_parity_difference"] == pytest.approx(rate.max() - rate.min())
    y = (part["label"] == "doctor").astype(int)
    yhat = (part["pred"] == "doctor").astype(int)
    eo = equalized_odds_difference(y, yhat, sensitive_features=part["gender"])
    assert got["equalized_odds_difference"] == pytest.approx(eo)
    # binary: the other class as positive gives the same value
    eo2 = equalized_odds_difference(1 - y, 1 - yhat, sensitive_features=part["gender"])
    dp2 = demographic_parity_difference(1 - y, 1 - yhat, sensitive_features=part["gender"])
    assert eo2 == pytest.approx(eo) and dp2 == pytest.approx(rate.max() - rate.min())


def test_fairness_multiclass_is_one_vs_rest_max():
    s = pd.DataFrame(
        {
            "model": "m",
            "g": ["a"] * 4 + ["b"] * 4,
            "label": ["x", "y", "z", "x", "x", "y", "z", "z"],
            "pred": ["x", "x", "z", "x", "y", "y", "y", "z"],
        }
    )
    out = fairness_differences(s, groups=["g"]).set_index("metric")["value"]
    # selection rates a: x 3/4, y 0, z 1/4 ; b: x 0, y 3/4, z 1/4 -> max diff 0.75
    assert out["demographic_parity_difference"] == pytest.approx(0.75)


def test_paired_comparison_known_sign():
    s = _samples()
    out = paired_comparison(
        s, "biased", "debiased", metrics=["mass:hair", "accuracy"], groups=["gender"],
        expected_sign={"mass:hair": 1}, n_boot=300,
    )  # fmt: skip
    assert out["cell"].iloc[0] == "all"
    hair = out[(out["cell"] == "all") & (out["metric"] == "mass:hair")].iloc[0]
    a = s[s["model"] == "biased"].set_index("id")["mass:hair"]
    b = s[s["model"] == "debiased"].set_index("id")["mass:hair"]
    d = (a - b).dropna()
    assert hair["n"] == len(d) and hair["mean_diff"] == pytest.approx(d.mean())
    assert 0 < hair["ci_low"] < hair["mean_diff"] < hair["ci_high"]
    assert hair["p_value"] == pytest.approx(stats.wilcoxon(d.to_numpy()).pvalue)
    assert hair["p_value"] < 1e-6
    assert hair["share_expected_sign"] == pytest.approx((d > 0).mean())
    small = out[(out["cell"] == "male / nurse")]
    assert small["small"].all() and small["p_value"].isna().all() and small["ci_low"].isna().all()
    # a model against itself: all differences zero -> no p-value, no sign
    same = paired_comparison(s, "biased", "biased", metrics=["mass:hair"], groups=["gender"],
                             by_cell=False, n_boot=50)  # fmt: skip
    assert len(same) == 1 and same["mean_diff"].item() == 0
    assert np.isnan(same["p_value"].item()) and np.isnan(same["share_expected_sign"].item())


def test_errors_name_the_culprit():
    s = _samples()
    with pytest.raises(DataError, match="mass:coat"):
        group_stats(s, groups=["gender"], metrics=["mass:coat"])
    with pytest.raises(DataError, match="age"):
        group_gaps(s, groups=["age"])
    with pytest.raises(DataError, match="pred"):
        fairness_differences(s.drop(columns="pred"), groups=["gender"])
    with pytest.raises(DataError, match="resnet"):
        paired_comparison(s, "biased", "resnet", metrics=["mass:hair"], groups=["gender"])
    with pytest.raises(DataError, match="img0"):
        paired_comparison(pd.concat([s, s.iloc[:1]]), "biased", "debiased",
                          metrics=["mass:hair"], groups=["gender"])  # fmt: skip
    with pytest.raises(ConfigError, match="expected_sign.mass:hair"):
        paired_comparison(s, "biased", "debiased", metrics=["mass:hair"], groups=["gender"],
                          expected_sign={"mass:hair": 2})  # fmt: skip
    with pytest.raises(ConfigError, match="min_group_size"):
        group_stats(s, groups=["gender"], min_group_size=-1)
    with pytest.raises(ConfigError, match="n_perm"):
        group_gaps(s, groups=["gender"], n_perm=0)
    with pytest.raises(ConfigError, match="metrics"):
        group_stats(s, groups=["gender"], metrics="mass:hair")
    with pytest.raises(DataError, match="label"):
        group_stats(s.drop(columns="label"), groups=["gender"])


def test_stratified_bootstrap():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, 40), rng.normal(5, 0.1, 40)])
    strata = ["a"] * 40 + ["b"] * 40
    # one stratum draws exactly what the plain bootstrap draws
    assert bootstrap_ci(x, strata=["s"] * 80, seed=2) == bootstrap_ci(x, seed=2)
    plain = bootstrap_ci(x, seed=0)
    strat = bootstrap_ci(x, strata=strata, seed=0)
    # fixing the stratum sizes removes the between-strata variance: a much narrower interval
    assert strat[1] - strat[0] < 0.3 * (plain[1] - plain[0])
    assert strat[0] < x.mean() < strat[1]
    # NaNs are dropped together with their stratum label
    with_nan = np.append(x, np.nan)
    assert bootstrap_ci(with_nan, strata=[*strata, "c"], seed=0) == strat
    with pytest.raises(DataError, match="strata"):
        bootstrap_ci(x, strata=strata[:10])


def test_categorical_columns_give_the_same_table():
    import warnings

    s = _samples()
    cat = s.astype({"gender": "category", "label": "category", "model": "category"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        got = group_stats(cat, groups=["gender"], metrics=["mass:hair"], n_boot=20)
    want = group_stats(s, groups=["gender"], metrics=["mass:hair"], n_boot=20)
    pd.testing.assert_frame_equal(got, want)


def test_permutation_cache_gives_the_same_p_values():
    from bias_audit.core.stats import _range_permutation_p

    rng = np.random.default_rng(4)
    values = rng.normal(size=90)
    values[60:] += 0.4
    codes = np.repeat([0, 1, 2], 30)
    means = [values[codes == c].mean() for c in range(3)]
    gap = max(means) - min(means)
    plain = _range_permutation_p(values, codes, 3, gap, 300, 0)
    cache: dict = {}
    cached = _range_permutation_p(values, codes, 3, gap, 300, 0, cache)
    again = _range_permutation_p(values, codes, 3, gap, 300, 0, cache)
    assert plain == cached == again and 90 in cache
    assert 0 < plain < 0.2


def test_worst_group_reads_the_table_hand_values():
    table = pd.DataFrame(
        {"model": ["m"] * 5 + ["z"] * 2,
         "cell": ["all", "a / x", "b / x", "c / x", "d / x", "all", "a / x"],
         "metric": ["accuracy"] * 4 + ["mass:hair"] + ["accuracy"] * 2,
         "value": [0.7, 0.5, 0.8, 0.1, 0.0, 0.6, 0.6],
         "n": [40, 10, 20, 5, 10, 12, 12], "n_valid": [40, 10, 20, 5, 10, 12, 12],
         "small": [False, False, False, True, False, False, True],
         "ci_low": [0.6, 0.2, 0.6, np.nan, 0.0, 0.3, np.nan],
         "ci_high": [0.8, 0.8, 0.9, np.nan, 0.1, 0.8, np.nan]}
    )  # fmt: skip
    w = worst_group(table).set_index("model")
    # c is smaller than the minimum and d is another metric: a is the worst judged cell
    m = w.loc["m"]
    assert (m["cell"], m["n_cells"], m["n_valid"]) == ("a / x", 2, 10)
    assert (m["value"], m["ci_low"], m["ci_high"], m["overall"]) == (0.5, 0.2, 0.8, 0.7)
    z = w.loc["z"]  # nothing judged: a row without a cell
    assert z["n_cells"] == 0 and pd.isna(z["cell"]) and np.isnan(z["value"])
    assert worst_group(table, metric="mass:hair").loc[0, "cell"] == "d / x"


def test_worst_group_of_group_stats_is_its_lowest_accuracy_cell():
    s = _samples()
    g = group_stats(s, groups=["gender"], min_group_size=10, n_boot=20)
    w = worst_group(g).set_index("model")
    for model, part in s.groupby("model"):
        acc = part.groupby(["gender", "label"])["correct"].agg(["mean", "size"])
        acc = acc[acc["size"] >= 10]
        (gender, label), k = acc["mean"].idxmin(), acc["mean"].min()
        assert w.loc[model, "cell"] == f"{gender} / {label}" and w.loc[model, "value"] == k
        assert w.loc[model, "overall"] == part["correct"].mean()


def test_class_rates_hand_values_and_wilson():
    s = pd.DataFrame(
        {"model": "m", "g": ["u", "u", "u", "u", "v", "v", "v"],
         "label": ["a", "a", "b", "b", "a", "b", "b"],
         "pred": ["a", "b", "a", "b", "a", "b", "b"]}
    )  # fmt: skip
    r = class_rates(s, groups=["g"]).set_index(["class", "value"])
    # class a in u: 1 of 2 a's predicted a (TPR 1/2), 1 of 2 b's predicted a (FPR 1/2)
    assert (r.loc[("a", "u"), "tpr"], r.loc[("a", "u"), "fpr"]) == (0.5, 0.5)
    assert (r.loc[("a", "v"), "tpr"], r.loc[("a", "v"), "fpr"]) == (1.0, 0.0)
    assert r.loc[("a", "u"), "tpr_gap"] == r.loc[("a", "v"), "tpr_gap"] == 0.5
    assert r.loc[("a", "u"), "fpr_gap"] == 0.5 and r.loc[("b", "v"), "n"] == 3
    ci = stats.binomtest(1, 2).proportion_ci(method="wilson")
    assert (r.loc[("a", "u"), "tpr_low"], r.loc[("a", "u"), "tpr_high"]) == pytest.approx(
        (ci.low, ci.high)
    )


def test_class_rate_gaps_match_fairlearn():
    from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate

    s = _samples()
    r = class_rates(s, groups=["gender"])
    for (model, cls), part in r.groupby(["model", "class"]):
        rows = s[s["model"] == model]
        y, yhat = (rows["label"] == cls).astype(int), (rows["pred"] == cls).astype(int)
        for fn, col in ((true_positive_rate, "tpr_gap"), (false_positive_rate, "fpr_gap")):
            mf = MetricFrame(metrics=fn, y_true=y, y_pred=yhat, sensitive_features=rows["gender"])
            assert part[col].iloc[0] == pytest.approx(mf.difference(method="between_groups"))


def test_cell_quantiles_hand_values():
    v = [0.0, 1.0, 2.0, 3.0, 100.0, np.nan]
    s = pd.DataFrame({"model": "m", "g": "u", "label": "a", "mass:x": v})
    q = cell_quantiles(s, groups=["g"], metrics=["mass:x"]).iloc[0]
    # quartiles of 0,1,2,3,100 (linear): 1, 2, 3; IQR 2, so 100 lies beyond the upper fence
    assert (q["q1"], q["median"], q["q3"]) == (1.0, 2.0, 3.0)
    assert (q["lower_fence"], q["upper_fence"], q["n_valid"]) == (0.0, 3.0, 5)
    assert q["mean"] == pytest.approx(106 / 5) and q["cell"] == "u / a"


def test_cell_names_never_collide():
    # Issue 19, defect 12: values containing the separator gave two cells one name.
    assert cell_name(["a / b", "c"]) != cell_name(["a", "b / c"])
    assert cell_name(["a\\", "/ c"]) != cell_name(["a\\ /", "c"])
    assert cell_name(["female", "doctor"]) == "female / doctor"
    s = pd.DataFrame(
        {"model": "m", "g": ["a / b", "a"], "label": ["c", "b / c"], "correct": [True, False],
         "pred": ["c", "c"]}
    )  # fmt: skip
    g = group_stats(s, groups=["g"], min_group_size=0, rates=False)
    acc = g[(g["metric"] == "accuracy") & (g["cell"] != "all")]
    assert len(acc) == 2 and acc["cell"].nunique() == 2
    assert sorted(acc["value"]) == [0.0, 1.0]


def _defined(names: tuple[str, ...]) -> list[str]:
    package = Path(__file__).resolve().parents[2] / "bias_audit"
    out = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            is_def = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_def and any(n in node.name.lower() for n in names):
                out.append(f"{path.relative_to(package)}:{node.name}")
    return out


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("wilson",), ["core/stats.py:wilson_interval"]),
        (
            ("bootstrap", "mean_ci", "boot"),
            ["core/stats.py:_boot_sums", "core/stats.py:bootstrap_ci"],
        ),
        (("worst",), ["core/stats.py:worst_group"]),
    ],
)
def test_one_implementation_of_each_statistic(names, expected):
    # Issue 11: one Wilson interval, one bootstrap, one worst-group function in the package.
    found = [f for f in _defined(names) if "_worst_group_accuracy" not in f]
    assert found == expected
