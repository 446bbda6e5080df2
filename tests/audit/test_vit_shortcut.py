"""A small ViT (patch 8, 96 px) trained from scratch on a watermark shortcut is flagged by the
audit, and one trained on clean data is not: the whole audit, on a transformer, with no glue."""

from __future__ import annotations

import json

import pytest

from bias_audit import AuditConfig, audit
from tests.audit.watermark import audit_config, build_case

CONFOUNDER_CRITERIA = ("max_confounder_mass", "max_confounder_lift", "max_flip_excess")


@pytest.mark.slow
def test_a_vit_that_learned_the_watermark_is_flagged_and_a_clean_one_is_not(tmp_path):
    case = build_case(tmp_path, arch="vit_tiny_p8", size=96, epochs=5, lr=2e-3, n_train=200)
    result = audit(AuditConfig.from_toml(audit_config(tmp_path, case)), out=tmp_path / "run",
                   progress=False)  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    layers = {m["name"]: m["target_layer"] for m in summary["models"]}
    # the last block's first norm, on the 12 x 12 patch grid
    assert layers == {n: "encoder.layers.encoder_layer_1.ln_1" for n in ("biased", "clean")}
    verdict = {v["model"]: v for v in result.summary["verdicts"]}
    crit = {m: {c["name"]: c for c in v["criteria"]} for m, v in verdict.items()}
    assert verdict["biased"]["status"] == "fail"
    assert crit["biased"]["max_confounder_lift"]["status"] == "fail"
    for name in CONFOUNDER_CRITERIA:
        assert crit["clean"][name]["status"] == "pass", (name, crit["clean"][name])
