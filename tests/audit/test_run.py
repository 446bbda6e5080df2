"""End-to-end: the CLI as a subprocess on a tiny generated world; resume; refusal; check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bias_audit.cli import main
from bias_audit.core.config import RESERVED_COLUMNS, AuditConfig
from bias_audit.core.maps import explain
from bias_audit.errors import ConfigError, ModelError
from bias_audit.io.checkpoints import load_model
from bias_audit.io.data import collate, load_manifest
from bias_audit.pipelines import AuditResult, StepSpec, audit, audit_batch
from tests.audit.conftest import MEAN, SIZE, STD, N, write_config

REPO = Path(__file__).resolve().parents[2]
METRICS = ("mass", "lift", "rank", "pointing", "loc_iou")
NAMES = ("coat", "face", "hair", "causal", "confounder", "background")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bias_audit", *map(str, args)],
        capture_output=True, text=True, env=_env(**env), timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run1(world) -> Path:
    out = world["root"] / "run1"
    proc = _cli("run", write_config(world), "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""  # --quiet, and no TTY: no progress bars
    return out


def test_cli_run_writes_the_documented_run_folder(run1):
    for name in ("config.toml", "samples.parquet", "groups.parquet", "gaps.parquet",
                 "fairness.parquet", "comparisons.parquet", "skipped.parquet", "maps.npz",
                 "gallery.json", "summary.json"):  # fmt: skip
        assert (run1 / name).is_file(), name
    samples = pd.read_parquet(run1 / "samples.parquet")
    expected = ["model", "id", "label", "pred", "correct", "prob", "target", "gender"]
    expected += [f"area:{n}" for n in NAMES]
    expected += [f"{m}:{n}" for m in METRICS for n in NAMES]
    expected += [f"{k}:{r}" for r in ("causal", "confounder", "background")
                 for k in ("flip", "drop", "flip_random", "drop_random")]  # fmt: skip
    assert set(expected) <= set(samples.columns)
    # every fixed column is refused as a group name (else a group would overwrite it)
    assert {c for c in samples.columns if ":" not in c} - {"gender"} <= RESERVED_COLUMNS
    assert len(samples) == 2 * N
    assert not samples.duplicated(["model", "id"]).any()
    assert list(dict.fromkeys(samples["model"])) == ["biased", "debiased"]
    assert (samples["correct"] == (samples["pred"] == samples["label"])).all()
    assert samples["prob"].between(0, 1).all()
    # roles partition the image: causal + confounder + background masses sum to 1
    total = samples[["mass:causal", "mass:confounder", "mass:background"]].sum(axis=1)
    np.testing.assert_allclose(total[samples["map_ok"]], 1.0, atol=1e-4)
    # s007 has no face annotation: its face metrics are NaN, never 0
    s7 = samples[samples["id"] == "s007"]
    assert s7[[f"{m}:face" for m in METRICS]].isna().all().all()
    assert s7["mass:hair"].notna().all()
    assert set(samples["flip:confounder"].dropna().unique()) <= {0.0, 1.0}


def test_summary_has_provenance_and_findings(run1, world):
    summary = json.loads((run1 / "summary.json").read_text())
    samples = pd.read_parquet(run1 / "samples.parquet")
    assert summary["config"] == (world["root"] / "audit.toml").read_text()
    assert (run1 / "config.toml").read_text() == summary["config"]
    data = summary["data"]
    assert data["n"] == N and data["fingerprint"].startswith("sha256:")
    assert data["regions"] == ["coat", "face", "hair"] and data["classes"] == ["doctor", "nurse"]
    assert {c["cell"] for c in data["cells"]} == {
        "female / doctor", "female / nurse", "male / doctor", "male / nurse"}  # fmt: skip
    import hashlib

    for m in summary["models"]:
        digest = hashlib.sha256((world["root"] / f"{m['name']}.pt").read_bytes()).hexdigest()
        assert m["sha256"] == "sha256:" + digest
        assert m["target_layer"] == "features" and m["layer_shape"] == [SIZE // 2, SIZE // 2]
        rows = samples[samples["model"] == m["name"]]
        assert m["nan_maps"] == int((~rows["map_ok"]).sum()) and len(rows) == N
    prov = summary["provenance"]
    assert prov["torch"] == torch.__version__ and prov["seed"] == 0
    assert {"total_s", "per_model_s"} <= set(summary["timings"])
    for f in summary["findings"]:
        assert {"rule", "severity", "model", "value", "ci_low", "ci_high", "p_value",
                "p_adjusted", "text"} <= set(f)  # fmt: skip
        assert f["severity"] in ("high", "medium", "low", "info")
    rules = {f["rule"] for f in summary["findings"]}
    assert {"confounder_attention", "worst_group_accuracy"} <= rules


def test_gallery_is_bounded_and_matches_its_index(run1):
    gallery = json.loads((run1 / "gallery.json").read_text())
    items = gallery["items"]
    assert gallery["methods"] == ["gradcam", "gradcam++"]
    assert len(items) == 4 * 2  # 4 cells x gallery_per_cell
    assert [i["reason"] for i in items[:2]] == ["confounder", "random"]
    samples = pd.read_parquet(run1 / "samples.parquet")
    first = samples[samples["model"] == "biased"].set_index("id")
    with np.load(run1 / "maps.npz") as npz:
        for item in items:
            k = item["key"]
            assert (
                npz[f"image/{k}"].shape == (SIZE, SIZE, 3) and npz[f"image/{k}"].dtype == np.uint8
            )
            assert npz[f"masks/{k}"].shape == (3, SIZE, SIZE)
            for model in ("biased", "debiased"):
                assert npz[f"map/{model}/{k}"].dtype == np.float16
                assert npz[f"method/gradcam++/{model}/{k}"].shape == (SIZE, SIZE)
                assert item["models"][model]["pred"] in ("doctor", "nurse")
        # the confounder pick of a cell is its most confounder-reliant image
        cell = items[0]["cell"]
        in_cell = first[(first["gender"] + " / " + first["label"]) == cell]
        assert items[0]["id"] == in_cell["mass:confounder"].idxmax()


def test_step_matches_a_direct_computation(world):
    ds = load_manifest(world["manifest"], groups=["gender"], image_size=SIZE, mean=MEAN, std=STD,
                       min_group_size=5)  # fmt: skip
    model = load_model("tests.audit.nets:build", checkpoint=world["biased"])
    batch = collate([ds[i] for i in range(6)])
    spec = StepSpec(model="biased", classes=tuple(ds.classes), roles={
        "causal": ("coat",), "confounder": ("face", "hair")}, groups=("gender",),
        target_layer="features")  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        rows = audit_batch(model, batch, spec=spec)
    finally:
        handle.remove()
    # one explain pass, then per role one occluded pass and one random-patch pass (besides the
    # layer's one-image layout probe, paid once per model and input shape)
    assert calls.count(6) == 1 + 2 * 3 and len(calls) - calls.count(6) <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    exp = explain(model, batch.images)
    maps = exp.maps["gradcam"]
    conf = batch.masks[:, [ds.regions.index("face"), ds.regions.index("hair")]].any(dim=1)
    expected = (maps * conf).sum(dim=(1, 2)) / maps.sum(dim=(1, 2))
    np.testing.assert_allclose(rows["mass:confounder"], expected.numpy(), rtol=1e-5)
    with torch.no_grad():
        probs = model(batch.images).softmax(dim=1)
    np.testing.assert_allclose(rows["prob"], probs.max(dim=1).values.numpy(), rtol=1e-5)
    assert list(rows["id"]) == batch.ids
    no_int = audit_batch(model, batch, spec=StepSpec(**{**spec.__dict__, "interventions": False}))
    assert not any(c.startswith("flip") for c in no_int.columns)


def test_refuses_to_overwrite_and_force_replaces(run1, world, capsys):
    cfg = write_config(world)
    before = (run1 / "samples.parquet").read_bytes()
    assert main(["run", str(cfg), "--out", str(run1), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and "--force" in err and err.count("\n") == 1
    assert (run1 / "samples.parquet").read_bytes() == before
    # A folder without the run marker: force deletes nothing in it (it once deleted a user's
    # report.html and a progress/ folder with an unrelated file).
    other = world["root"] / "forced"
    (other / "progress").mkdir(parents=True)
    (other / "report.html").write_text("my report")
    (other / "progress" / "notes.txt").write_text("mine")
    assert main(["run", str(cfg), "--out", str(other), "--force", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a run folder" in err and ".bias-audit-run" in err and err.count("\n") == 1
    assert (other / "report.html").read_text() == "my report"
    assert (other / "progress" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in other.rglob("*")) == ["notes.txt", "progress", "report.html"]
    # A run folder: force replaces what the run wrote and keeps the rest, also in progress/.
    (other / "report.html").unlink()
    (other / "progress" / "notes.txt").unlink()
    (other / "progress").rmdir()
    assert main(["run", str(cfg), "--out", str(other), "--quiet"]) == 0
    (other / "notes.txt").write_text("mine")
    (other / "progress" / "mine.txt").write_text("mine too")
    (other / "samples.parquet").write_text("stale")
    assert main(["run", str(cfg), "--out", str(other), "--force", "--quiet"]) == 0
    assert (other / "notes.txt").read_text() == "mine"  # only run files are replaced
    assert (other / "progress" / "mine.txt").read_text() == "mine too"
    a = pd.read_parquet(run1 / "samples.parquet")
    b = pd.read_parquet(other / "samples.parquet")
    pd.testing.assert_frame_equal(a, b)  # deterministic: same config, same rows


def test_check_exit_codes(run1, capsys):
    ok = main(["check", str(run1), "--max-confounder-mass", "1", "--min-worst-group-accuracy",
               "0", "--max-flip-rate", "1"])  # fmt: skip
    assert ok == 0
    assert "FAIL" not in capsys.readouterr().out
    bad = main(["check", str(run1), "--max-confounder-mass", "0.01", "--min-worst-group-accuracy",
                "0.99", "--model", "biased"])  # fmt: skip
    out = capsys.readouterr().out
    assert bad == 1
    samples = pd.read_parquet(run1 / "samples.parquet")
    mass = samples.loc[samples["model"] == "biased", "mass:confounder"].mean()
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2 and all("biased" in f for f in fails)
    assert f"(max_confounder_mass) = {mass:.4f}" in out
    assert main(["check", str(run1.parent / "nowhere"), "--max-confounder-mass", "0.3"]) == 2
    assert "nowhere" in capsys.readouterr().err
    # no flag: the run's own [gate] (recorded in summary.json), one line per criterion
    summary = json.loads((run1 / "summary.json").read_text())
    code = main(["check", str(run1)])
    out = capsys.readouterr().out
    assert out.count("(max_confounder_lift)") == len(summary["models"])
    by_verdict = {v["model"]: v["status"] for v in summary["verdicts"]}
    assert code == (1 if "fail" in by_verdict.values() else 0)
    assert main(["check", str(run1), "--max-flip-rate", "0.5", "--model", "nope"]) == 2
    assert "--model: no model 'nope'" in capsys.readouterr().err
    assert main(["check", str(run1), "--max-flip-rate", "1.5"]) == 2
    assert "--max-flip-rate: expected 0..1" in capsys.readouterr().err
    # a run without the pooled lift (an older run): the gate says so and does not fail on it
    copy = run1.parent / "no_lift"
    copy.mkdir(exist_ok=True)
    (copy / "summary.json").write_text(json.dumps(summary))
    groups = pd.read_parquet(run1 / "groups.parquet")
    groups[~groups["metric"].str.startswith("pooled_lift")].to_parquet(copy / "groups.parquet")
    assert main(["check", str(copy), "--model", "debiased"]) in (0, 1)
    out = capsys.readouterr().out
    assert "NOT MEASURED debiased: Confounder lift (max_confounder_lift)" in out
    assert main(["check", str(copy), "--max-confounder-lift", "2"]) == 2
    assert "nothing to judge max_confounder_lift" in capsys.readouterr().err
    assert main(["check", str(run1), "--max-flip-excess", "-2"]) == 2
    assert "--max-flip-excess: expected -1..1" in capsys.readouterr().err


def test_check_fails_when_no_cell_can_be_judged(run1, tmp_path, capsys):
    # with a minimum group size above every cell, nothing can be judged: no data, which fails
    summary = json.loads((run1 / "summary.json").read_text())
    summary["stats"]["min_group_size"] = 1000
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "summary.json").write_text(json.dumps(summary))
    (copy / "groups.parquet").write_bytes((run1 / "groups.parquet").read_bytes())
    assert main(["check", str(copy), "--min-worst-group-accuracy", "0.5"]) == 1
    out = capsys.readouterr().out
    assert out.count("no valid data") == len(summary["models"])


def test_compare_runs_paired(run1, world, capsys, tmp_path):
    assert main(["compare", str(run1), str(run1), "--model-b", "debiased",
                 "--out", str(tmp_path / "cmp.csv")]) == 0  # fmt: skip
    table = pd.read_csv(tmp_path / "cmp.csv")
    samples = pd.read_parquet(run1 / "samples.parquet")
    a = samples[samples["model"] == "biased"].set_index("id")["mass:confounder"]
    b = samples[samples["model"] == "debiased"].set_index("id")["mass:confounder"]
    row = table[table["metric"] == "mass:confounder"].iloc[0]
    assert row["mean_diff"] == pytest.approx((a - b).mean(), rel=1e-6)
    assert row["ci_low"] <= row["mean_diff"] <= row["ci_high"] and row["n"] == N
    assert row["model_a"] == "A/biased" and row["model_b"] == "B/debiased"
    assert "mass:confounder" in capsys.readouterr().out
    assert main(["compare", str(run1), str(run1), "--model-a", "nope"]) == 2
    assert "--model-a: no model 'nope'" in capsys.readouterr().err


def test_result_load_roundtrip(run1):
    r = AuditResult.load(run1)
    assert len(r.samples) == 2 * N and r.summary["title"] == "tiny"
    assert len(r.findings) == len(r.summary["findings"])


def test_region_not_in_manifest_is_named(world, tmp_path):
    cfg = AuditConfig.from_toml(write_config(world, "bad.toml", replace=('"coat"', '"gown"')))
    with pytest.raises(ConfigError, match=r"\[regions\] causal: region 'gown' is not in"):
        audit(cfg, out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_all_zero_maps_are_counted_not_scored(world):
    ds = load_manifest(world["manifest"], groups=["gender"], image_size=SIZE, mean=MEAN, std=STD)
    model = load_model("tests.audit.nets:build", checkpoint=world["biased"])
    with torch.no_grad():
        model.fc.weight.zero_()  # no gradient reaches the layer: every Grad-CAM map is zero
    batch = collate([ds[i] for i in range(4)])
    spec = StepSpec(model="dead", classes=tuple(ds.classes), roles={"confounder": ("hair",)},
                    groups=("gender",), interventions=False)  # fmt: skip
    rows = audit_batch(model, batch, spec=spec)
    assert not rows["map_ok"].any()
    assert rows[[c for c in rows.columns if c.startswith(("mass:", "rank:"))]].isna().all().all()
    assert rows["area:hair"].notna().all()  # areas do not depend on the map


def test_skipped_rows_are_listed_and_raise_names_the_row(world, tmp_path, capsys):
    root = world["root"]
    table = pd.read_csv(world["manifest"])
    table.loc[3, "image"] = "img/missing.png"
    table.to_csv(root / "broken.csv", index=False)
    cfg = write_config(world, "broken.toml", replace=('"manifest.csv"', '"broken.csv"'))
    assert main(["run", str(cfg), "--out", str(tmp_path / "raise"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "missing.png" in err and "row 4" in err and err.count("\n") == 1
    skip = write_config(
        world, "skip.toml", replace=('"manifest.csv"', '"broken.csv"\non_error = "skip"')
    )
    result = audit(skip, out=tmp_path / "skip", progress=False)
    skipped = pd.read_parquet(tmp_path / "skip" / "skipped.parquet")
    assert list(skipped["row"]) == [4] and skipped["column"].iloc[0] == "image"
    assert result.summary["data"]["skipped"] == 1 and result.summary["data"]["n"] == N - 1
    assert len(result.samples) == 2 * (N - 1)


def test_report_command_renders_a_finished_run(run1, capsys):
    assert main(["report", str(run1), "-q"]) == 0, capsys.readouterr().err
    html = (run1 / "report.html").read_text()
    assert "tiny" in html


def test_interventions_without_baseline_cost_one_pass_per_role(world):
    ds = load_manifest(world["manifest"], groups=["gender"], image_size=SIZE, mean=MEAN, std=STD)
    model = load_model("tests.audit.nets:build", checkpoint=world["biased"])
    batch = collate([ds[i] for i in range(4)])
    roles = {"causal": ("coat",), "confounder": ("face", "hair")}
    spec = StepSpec(
        model="m", classes=tuple(ds.classes), roles=roles, target_layer="features", baseline=False
    )
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        rows = audit_batch(model, batch, spec=spec)
    finally:
        handle.remove()
    # Passes over the batch; the layer's one-image layout probe is paid once per model and shape.
    assert calls.count(4) == 1 + 3 and len(calls) - calls.count(4) <= 1
    assert rows["flip_random:confounder"].isna().all() and rows["flip:confounder"].notna().all()
    cfg = AuditConfig.from_toml(
        write_config(world, "nobase.toml", extra="[interventions]\nbaseline = false\n")
    )
    assert cfg.interventions.baseline is False


def test_occluded_regions_cost_a_pass_each_and_match_a_direct_occlusion(world):
    ds = load_manifest(world["manifest"], groups=["gender"], image_size=SIZE, mean=MEAN, std=STD)
    model = load_model("tests.audit.nets:build", checkpoint=world["biased"])
    batch = collate([ds[i] for i in range(4, 10)])  # holds s007, which has no face mask
    roles = {"causal": ("coat",), "confounder": ("face", "hair")}
    spec = StepSpec(
        model="m", classes=tuple(ds.classes), roles=roles, target_layer="features",
        occlude_regions=("hair", "face"), fill="mean",
    )  # fmt: skip
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        rows = audit_batch(model, batch, spec=spec)
    finally:
        handle.remove()
    # one explain pass, then per role and per region one occluded and one random-patch pass
    # (besides the layer's one-image layout probe, paid once per model and input shape); the
    # face passes hold only the 5 images that have a face annotation (s007 has none)
    passes = [n for n in calls if n > 1]
    assert len(passes) == 1 + 2 * (3 + 2) and len(calls) - len(passes) <= 1, calls
    assert passes.count(5) == 2 and passes.count(6) == 9, calls
    for k in ("flip", "drop", "flip_random", "drop_random"):
        assert {f"{k}:hair", f"{k}:face"} <= set(rows.columns)
    # the oracle: fill the hair with each image's per-channel mean and predict again
    images = batch.images
    hair = batch.masks[:, ds.regions.index("hair")][:, None]
    occluded = torch.where(hair, images.mean(dim=(2, 3), keepdim=True), images)
    with torch.no_grad():
        clean, after = model(images).softmax(1), model(occluded).softmax(1)
    pred = clean.argmax(1)
    np.testing.assert_array_equal(rows["flip:hair"], (after.argmax(1) != pred).float().numpy())
    drop = clean.gather(1, pred[:, None])[:, 0] - after.gather(1, pred[:, None])[:, 0]
    np.testing.assert_allclose(rows["drop:hair"], drop.numpy(), atol=1e-5)
    # an absent region is not occluded: NaN, not 0
    s7 = rows["id"] == "s007"
    assert rows.loc[s7, ["flip:face", "drop:face"]].isna().all().all()
    assert rows.loc[~s7, "flip:face"].notna().all()


def test_occluded_regions_reach_the_tables_and_the_report(world, tmp_path):
    from bias_audit.report import load_run
    from bias_audit.report._figures import intervention_figures

    extra = '[interventions]\nregions = ["hair"]\nbaseline = false\n'
    cfg = AuditConfig.from_toml(write_config(world, "hair.toml", extra=extra))
    assert cfg.interventions.regions == ("hair",)
    result = audit(cfg, out=tmp_path / "r", progress=False)
    samples = result.samples
    assert samples["flip:hair"].notna().all() and samples["flip_random:hair"].isna().all()
    g = result.groups
    for model in ("biased", "debiased"):
        part = samples[samples["model"] == model]
        value = g[(g["model"] == model) & (g["cell"] == "all") & (g["metric"] == "flip:hair")]
        assert float(value["value"].iloc[0]) == pytest.approx(part["flip:hair"].mean())
    figures = intervention_figures(load_run(tmp_path / "r"))
    titles = [a["title"]["text"] for a in (
        v for k, v in figures[0].figure["layout"].items() if k.startswith("xaxis"))]  # fmt: skip
    assert titles == ["causal", "confounder", "background", "hair"]


def test_occluded_region_not_in_manifest_is_named(world, tmp_path):
    extra = '[interventions]\nregions = ["hair", "beard"]\n'
    cfg = AuditConfig.from_toml(write_config(world, "beard.toml", extra=extra))
    with pytest.raises(ConfigError, match=r"\[interventions\] regions: \['beard'\] not in"):
        audit(cfg, out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_checkpoint_naming_a_factory_is_refused_unless_the_config_names_it(world, tmp_path):
    # The world's checkpoints record a factory; without `arch` in the config nothing may run it.
    cfg = write_config(world, "nofactory.toml", replace=('arch = "tests.audit.nets:build"\n', ""))
    with pytest.raises(ModelError, match=r"biased\.pt.*tests\.audit\.nets:build.*never chooses"):
        audit(AuditConfig.from_toml(cfg), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "samples.parquet").exists()


def test_run_files_have_the_umask_mode(run1):
    mask = os.umask(0o022)
    os.umask(mask)
    files = [p for p in run1.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert (p.stat().st_mode & 0o777) == 0o666 & ~mask, p


def _interval(row) -> tuple[float, float, float]:
    return float(row["value"]), float(row["ci_low"]), float(row["ci_high"])


def test_one_number_one_interval_in_tables_findings_and_report(run1, capsys):
    # Issue 11: the finding, groups.parquet and the report show the same interval of a number.
    from bias_audit.report import render_report

    groups = pd.read_parquet(run1 / "groups.parquet")
    summary = json.loads((run1 / "summary.json").read_text())
    html = render_report(run1, out=run1 / "report-intervals.html").read_text()
    pooled = groups[groups["cell"] == "all"].set_index(["model", "metric"])
    seen = 0
    for f in summary["findings"]:
        if f["rule"] in ("confounder_attention", "confounder_reliance"):
            row = pooled.loc[(f["model"], f["metric"])]
            assert (f["value"], f["ci_low"], f["ci_high"]) == _interval(row)
            seen += 1
        elif f["rule"] == "worst_group_accuracy":
            row = groups[(groups["model"] == f["model"]) & (groups["cell"] == f["cell"])
                         & (groups["metric"] == "accuracy")].iloc[0]  # fmt: skip
            assert (f["value"], f["ci_low"], f["ci_high"]) == _interval(row)
            # the report's worst-group table shows the same row and interval
            m = re.search(rf"<td>{re.escape(f['model'])}</td><td>{re.escape(f['cell'])}</td>"
                          r"<td>(\d+)</td><td>([\d.]+)</td><td>\[([\d.]+), ([\d.]+)\]</td>",
                          html)  # fmt: skip
            assert m, f["cell"]
            assert int(m[1]) == row["n"]
            shown = tuple(float(x) for x in m.groups()[1:])
            assert shown == pytest.approx(_interval(row), abs=5e-4)
            seen += 1
    assert seen >= 4  # attention and worst group for both models at least
    worst = pd.read_parquet(run1 / "worst_group.parquet").set_index("model")
    for m in summary["models"]:
        w, row = m["worst_group"], worst.loc[m["name"]]
        assert (w["value"], w["ci_low"], w["ci_high"]) == _interval(row)
        assert w["overall"] == pooled.loc[(m["name"], "accuracy"), "value"] == m["accuracy"]


def test_a_model_with_zero_weights_fails_the_gate_and_gets_a_high_finding(world, tmp_path):
    # Issue 19, defect 6: no valid map at all must not pass a gate on the confounder mass.
    from bias_audit.io.checkpoints import CheckpointMeta, save_checkpoint
    from bias_audit.pipelines import check_run
    from tests.audit.nets import TinyNet

    net = TinyNet(2)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    meta = CheckpointMeta(arch="tests.audit.nets:build", classes=("doctor", "nurse"),
                          image_size=SIZE, mean=MEAN, std=STD)  # fmt: skip
    save_checkpoint(world["root"] / "zero.pt", net.state_dict(), meta)
    cfg = write_config(world, "zero.toml", replace=('"biased.pt"', '"zero.pt"'))
    result = audit(AuditConfig.from_toml(cfg), out=tmp_path / "zero", progress=False)
    zero = result.samples[result.samples["model"] == "biased"]
    assert not zero["map_ok"].any() and zero["mass:confounder"].isna().all()

    crit = check_run(tmp_path / "zero", max_confounder_mass=0.5, max_flip_rate=1.0, model="biased")
    mass = next(c for c in crit if c.name == "max_confounder_mass")
    assert mass.status == "no_data" and mass.failed and mass.n == 0
    assert "no valid data" in mass.line
    assert main(["check", str(tmp_path / "zero"), "--max-confounder-mass", "0.5"]) == 1

    bad = [f for f in result.findings if f["rule"] == "degenerate_maps" and f["model"] == "biased"]
    assert len(bad) == 1 and bad[0]["severity"] == "high" and bad[0]["value"] == 1.0
    # the working model keeps its findings, and gets no such high finding
    assert not any(
        f["rule"] == "degenerate_maps" and f["severity"] == "high" and f["model"] == "debiased"
        for f in result.findings
    )


def test_scorecam_states_its_cost_and_is_refused_over_the_budget(world, tmp_path, capsys):
    cfg = write_config(
        world, "scorecam.toml",
        replace=('methods = ["gradcam", "gradcam++"]',
                 'methods = ["gradcam", "scorecam"]\nmax_seconds = 0.000001'),
    )  # fmt: skip
    with pytest.raises(ConfigError, match=rf"\[explain\] max_seconds: biased: scorecam needs {N} "
                       rf"images x \d+ channels = \d+ forward passes, about"):  # fmt: skip
        audit(AuditConfig.from_toml(cfg), out=tmp_path / "sc", progress=False)
    # within budget the estimate is printed before the run, and Score-CAM is measured too
    cfg = write_config(
        world, "scorecam2.toml",
        replace=('methods = ["gradcam", "gradcam++"]', 'methods = ["gradcam", "scorecam"]'),
    )  # fmt: skip
    result = audit(AuditConfig.from_toml(cfg), out=tmp_path / "sc2", progress=True)
    assert "forward passes" in capsys.readouterr().err
    assert result.samples["mass:confounder@scorecam"].notna().any()
