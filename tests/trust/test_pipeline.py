"""The trust phase inside an audit: files, summary.json, config."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bias_audit.core.config import AuditConfig, TrustConfig
from bias_audit.errors import ConfigError
from bias_audit.io.checkpoints import load_model
from bias_audit.pipelines import audit
from bias_audit.pipelines._trust import state_sha256
from tests.audit.conftest import _save_models, _world, write_config

# These tests train models or run whole audits: the slow tier.
pytestmark = pytest.mark.slow

TRUST = """
[trust]
sample = 12
steps = 3
methods = ["gradcam", "layercam"]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust_world")
    return {"root": root, "manifest": _world(root), **_save_models(root)}


@pytest.fixture(scope="module")
def run(world):
    return audit(write_config(world, "trust.toml", extra=TRUST), out=world["root"] / "r",
                 progress=False)  # fmt: skip


def test_trust_reaches_summary_and_files(run, world):
    trust = run.summary["trust"]
    assert trust["enabled"] is True and trust["sample"] == 12
    assert trust["methods"] == ["gradcam", "layercam"]
    assert set(trust["models"]) == {"biased", "debiased"}
    on_disk = json.loads((run.run_dir / "summary.json").read_text())["trust"]
    assert on_disk == json.loads((run.run_dir / "trust.json").read_text())
    table = pd.read_parquet(run.run_dir / "trust.parquet")
    assert set(table["check"]) == {"randomization", "layers", "faithfulness"}
    assert set(table["model"]) == {"biased", "debiased"}
    m = trust["models"]["biased"]
    assert m["n"] == 12 and m["target_layer"] == "features"
    # 3 steps top-down + 3 bottom-up, 2 methods
    assert len(m["randomization"]) == 12
    assert {r["fraction"] for r in m["faithfulness"]} == {0.05, 0.1, 0.2}
    for f in trust["findings"]:
        assert set(f) == {"code", "model", "method", "text", "severity"}


def test_the_audited_model_is_bit_for_bit_the_checkpoint(run, world):
    for name in ("biased", "debiased"):
        fresh = load_model(
            "tests.audit.nets:build", checkpoint=world[name], classes=("doctor", "nurse")
        )
        assert run.summary["trust"]["models"][name]["state_sha256"] == state_sha256(fresh)


def test_trust_can_be_turned_off(world, tmp_path):
    cfg = write_config(world, "off.toml", extra="\n[trust]\nenabled = false\n")
    result = audit(cfg, out=tmp_path / "off", progress=False)
    assert result.summary["trust"] == {"enabled": False}
    assert not (tmp_path / "off" / "trust.parquet").exists()


def test_config_section_defaults_and_errors(world):
    t = TrustConfig()
    assert (t.enabled, t.sample, t.steps, t.fractions) == (True, 64, 2, (0.05, 0.1, 0.2))
    base = {"data": {"manifest": str(world["manifest"])},
            "models": [{"name": "a", "checkpoint": str(world["biased"])}]}  # fmt: skip
    assert AuditConfig.from_dict(base).trust == t
    for bad, match in (
        ({"sampel": 3}, "unknown key 'sampel'; did you mean 'sample'"),
        ({"fractions": [0.05, 0.1, 1.5]}, r"\[trust\] fractions: expected shares"),
        ({"methods": ["guided_backprop"]}, r"\[trust\] methods: .*input gradients"),
        ({"sample": 1}, r"\[trust\] sample: expected an integer between 2"),
    ):
        with pytest.raises(ConfigError, match=match):
            AuditConfig.from_dict({**base, "trust": bad})


def test_report_has_the_trust_section(run):
    from bias_audit.report import render_report

    html = render_report(run.run_dir, out=run.run_dir / "trust_report.html").read_text()
    section = html[html.index('<section id="trust">') :]
    section = section[: section.index("</section>")]
    assert "Can these maps be trusted?" in section
    assert 'id="trust-biased"' in section and 'id="trust-debiased"' in section
    assert "Randomisation: after every layer of biased is re-initialised" in section
    assert "Faithfulness: deleting the 5% most attended pixels" in section
    for fid in ("fig-trust-randomization", "fig-trust-layers", "fig-trust-faithfulness"):
        assert f'id="{fid}"' in html and f'id="{fid}-data"' in html
    assert '<a href="#trust">' in html


def test_a_failed_trust_check_is_a_caveat_on_the_verdict_not_a_new_status():
    from bias_audit.core.verdicts import with_trust_caveats

    verdicts = [
        {"model": "a", "status": "pass", "caveats": [{"code": "resized", "text": "r"}]},
        {"model": "b", "status": "fail", "caveats": []},
    ]
    found = [
        {"code": "method_insensitive", "model": "a", "method": "gradcam", "text": "t1",
         "severity": "high"},
        {"code": "layer_dependent", "model": "a", "method": "gradcam", "text": "t2",
         "severity": "low"},
        {"code": "not_faithful", "model": "b", "method": "gradcam", "text": "t3",
         "severity": "medium"},
    ]  # fmt: skip
    out = with_trust_caveats(verdicts, found)
    assert [v["status"] for v in out] == ["pass", "fail"]
    assert [c["code"] for c in out[0]["caveats"]] == ["resized", "trust_method_insensitive"]
    assert out[0]["caveats"][1]["link"] == "#trust" and out[1]["caveats"][0]["text"] == "t3"
    assert verdicts[0]["caveats"] == [{"code": "resized", "text": "r"}]  # input untouched
