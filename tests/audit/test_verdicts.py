"""Acceptance of issue 12's verdict half on a case written here: a watermark shortcut.

The biased model's label follows a corner watermark; the clean one learned the shapes. The
audit must fail the first, pass the second with no medium or high finding, measure every
listed method, and warn when the maps come from a non-final layer.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bias_audit import audit
from bias_audit.cli import main
from bias_audit.core.config import AuditConfig
from bias_audit.errors import ConfigError
from tests.audit.watermark import SIZE, audit_config, build_case

pytestmark = pytest.mark.slow  # trains two models (about 15 s on 2 cores)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("watermark")
    return root, build_case(root)


@pytest.fixture(scope="module")
def run(case):
    root, paths = case
    return audit(audit_config(root, paths), out=root / "run", progress=False)


def test_the_biased_model_fails_and_the_clean_one_passes(run):
    verdicts = {v["model"]: v for v in run.summary["verdicts"]}
    assert verdicts["biased"]["status"] == "fail"
    assert verdicts["clean"]["status"] == "pass"
    # the clean model has no medium or high finding, and no risk at all is drawn for it
    clean = [f for f in run.findings if f["model"] == "clean"]
    assert clean and all(f["severity"] in ("low", "info") for f in clean)
    # the biased model fails on its reliance and its worst group, from the groups table
    groups = run.groups
    crit = {c["name"]: c for c in verdicts["biased"]["criteria"]}
    assert crit["max_flip_excess"]["status"] == "fail"
    assert crit["min_worst_group_accuracy"]["status"] == "fail"
    row = groups[(groups["model"] == "biased") & (groups["cell"] == "all")
                 & (groups["metric"] == "flip_excess:confounder")].iloc[0]  # fmt: skip
    assert crit["max_flip_excess"]["value"] == row["value"]
    samples = run.samples[run.samples["model"] == "biased"]
    excess = (samples["flip:confounder"] - samples["flip_random:confounder"]).mean()
    assert row["value"] == pytest.approx(excess)
    assert verdicts["biased"]["top_finding"]["severity"] == "high"
    assert verdicts["clean"]["top_finding"] is None


def test_summary_leads_with_the_answer(run):
    s = run.summary
    assert list(s)[:5] == ["verdicts", "scoreboard", "changes", "warnings", "methods"]
    board = {b["model"]: b for b in s["scoreboard"]}
    samples = run.samples
    for model in ("biased", "clean"):
        acc = samples.loc[samples["model"] == model, "correct"].mean()
        assert board[model]["accuracy"]["value"] == pytest.approx(acc)
        rows = samples[samples["model"] == model]
        lift = rows["mass:confounder"].mean() / rows["area:confounder"].mean()
        assert board[model]["confounder_lift"]["value"] == pytest.approx(lift)
    # the comparison is a change of the better model, never its risk
    acc = next(c for c in s["changes"] if c["metric"] == "accuracy")
    assert (acc["model_a"], acc["model_b"], acc["direction"]) == ("biased", "clean", "better")
    assert acc["diff"] > 0 and "clean vs biased: accuracy +" in acc["text"]
    assert not any(f["rule"] == "model_difference" for f in run.findings)
    assert all(f["kind"] in ("risk", "info") for f in run.findings)
    assert s["gate"]["max_confounder_lift"] == 2.0
    # JSON-safe as written
    written = json.loads((run.run_dir / "summary.json").read_text())
    assert written["verdicts"][0]["status"] == s["verdicts"][0]["status"]


def test_every_method_is_measured(run):
    samples, groups = run.samples, run.groups
    assert "mass:confounder@gradcam++" in samples and "mass:confounder" in samples
    assert "area:confounder@gradcam++" not in samples  # the area does not depend on the map
    assert samples["mass:causal@gradcam++"].notna().sum() == samples["mass:causal"].notna().sum()
    row = groups[(groups["model"] == "clean") & (groups["cell"] == "all")
                 & (groups["metric"] == "mass:causal@gradcam++")].iloc[0]  # fmt: skip
    clean = samples[samples["model"] == "clean"]
    assert row["value"] == pytest.approx(clean["mass:causal@gradcam++"].mean())
    assert run.summary["methods"] == ["gradcam", "gradcam++"]


def test_gaps_are_within_each_class(run):
    gaps = run.gaps
    assert set(gaps["scope"]) == {"cross", "square", "between classes"}
    within = gaps[(gaps["scope"] == "cross") & (gaps["model"] == "biased")
                  & (gaps["metric"] == "accuracy")].iloc[0]  # fmt: skip
    s = run.samples[(run.samples["model"] == "biased") & (run.samples["label"] == "cross")]
    by_mark = s.groupby("watermark")["correct"].mean()
    assert within["gap"] == pytest.approx(by_mark.max() - by_mark.min())
    assert {within["worst_cell"], within["best_cell"]} == {"no / cross", "yes / cross"}


def test_check_applies_the_runs_gate(run, capsys):
    assert main(["check", str(run.run_dir)]) == 1
    out = capsys.readouterr().out
    assert "FAIL biased" in out and "FAIL clean" not in out
    assert main(["check", str(run.run_dir), "--model", "clean"]) == 0
    capsys.readouterr()
    assert main(["check", str(run.run_dir), "--model", "clean", "--max-confounder-lift",
                 "0.01"]) == 1  # fmt: skip
    assert "(max_confounder_lift)" in capsys.readouterr().out


def test_a_non_final_layer_is_a_warning(case):
    root, paths = case
    cfg = audit_config(root, paths, target_layer="features.5", name="layer.toml")
    result = audit(cfg, out=root / "layer", progress=False)
    codes = [w["code"] for w in result.summary["warnings"]]
    assert codes.count("non_final_layer") == 2
    assert "features.5" in result.summary["warnings"][0]["text"]
    for v in result.summary["verdicts"]:
        assert "non_final_layer" in [c["code"] for c in v["caveats"]]


def test_image_size_is_never_a_silent_choice(case):
    root, paths = case
    # no image_size anywhere in the config: the checkpoint's, as recorded
    result_models = AuditConfig.from_toml(audit_config(root, paths, name="size.toml"))
    assert result_models.data.image_size is None
    cfg = (
        audit_config(root, paths, name="big.toml")
        .read_text()
        .replace("batch_size = 32", "batch_size = 32\nimage_size = 96")
    )
    (root / "big.toml").write_text(cfg)
    result = audit(root / "big.toml", out=root / "big", progress=False)
    resized = [w for w in result.summary["warnings"] if w["code"] == "resized"]
    assert len(resized) == 2 and f"{SIZE} px" in resized[0]["text"] and "2.0x" in resized[0]["text"]
    assert result.summary["models"][0]["image_size_from"] == "data"


def test_mixed_image_sizes_without_a_size_stop_and_ask(case, tmp_path):
    root, paths = case
    from PIL import Image

    from tests.audit.watermark import _write_set

    manifest = _write_set(tmp_path, "mixed", [("cross", "cross", True)] * 4, seed=0)
    table = pd.read_csv(manifest)
    big = Image.open(tmp_path / table["image"][0]).resize((64, 64))
    big.save(tmp_path / table["image"][0])
    Image.open(tmp_path / table["mask:object"][0]).resize((64, 64)).save(
        tmp_path / table["mask:object"][0]
    )
    torch_state = __import__("torch").load(paths["model_clean"], weights_only=False)
    plain = tmp_path / "plain.pt"
    __import__("torch").save(torch_state["state_dict"] if "state_dict" in torch_state
                             else torch_state, plain)  # fmt: skip
    (tmp_path / "a.toml").write_text(
        f'[data]\nmanifest = "{manifest}"\n[[models]]\nname = "m"\narch = "smallcnn_w8"\n'
        f'classes = ["cross", "square"]\ncheckpoint = "{plain}"\n'
    )
    with pytest.raises(ConfigError, match=r"\[data\] image_size: not set.*48x48, 64x64"):
        audit(tmp_path / "a.toml", out=tmp_path / "out", progress=False)
