"""Issue 16 (b): on the nurse/doctor case audited with no regions, discovery flags the biased
model's strategy, and that strategy sits on face and hair (measured afterwards with the masks
the audit did not see)."""

from __future__ import annotations

import pandas as pd
import pytest

from bias_audit.case_studies import nurse_doctor
from bias_audit.case_studies._runner import generator_options, train_plan
from bias_audit.core.config import AuditConfig
from bias_audit.io._resources import resource_dir
from bias_audit.pipelines import audit, train_classifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    # The shipped case's data and its biased model (seed 0), as `make demo` builds them.
    out = tmp_path_factory.mktemp("nd-discovery")
    data, configs = train_plan(
        resource_dir("case_studies") / "nurse_doctor" / "train.toml", out / "data",
        out / "models", quick=False,
    )  # fmt: skip
    nurse_doctor.generate(out / "data", **generator_options(data, nurse_doctor))
    train_classifier(configs["biased"], progress=False)
    return out, int(data.get("image_size", 64))


def _audit(out, size, *, regions: bool, name: str):
    table = {
        "data": {"manifest": "data/test/manifest.csv", "groups": ["gender"],
                 "image_size": size, "batch_size": 64},
        "interventions": {"enabled": False},
        "trust": {"enabled": False},
        "report": {"enabled": False},
        "models": [{"name": "biased", "checkpoint": "models/biased/model.pt"}],
    }  # fmt: skip
    if regions:
        table["regions"] = {"causal": ["coat", "stethoscope"], "confounder": ["face", "hair"]}
    return audit(AuditConfig.from_dict(table, base_dir=out), out=out / name, progress=False)


def test_the_biased_model_has_a_flagged_strategy_on_face_and_hair(case):
    out, size = case
    blind = _audit(out, size, regions=False, name="blind")
    assert blind.samples["mass:confounder"].isna().all()  # the audit saw no region
    flagged = [e for e in blind.summary["discovery"] if e["flagged"] and e["view"] == "map"]
    assert flagged, [e["text"] for e in blind.summary["discovery"]]
    # afterwards, with the masks: each map cluster's mean share of attention on face + hair
    seen = _audit(out, size, regions=True, name="seen")
    mass = seen.samples.set_index("id")["mass:confounder"]
    clusters = blind.samples.set_index("id")["cluster"]
    # discovery does not depend on the regions: the same clusters in both runs
    pd.testing.assert_series_equal(clusters, seen.samples.set_index("id")["cluster"])
    by_cluster = mass.groupby(clusters).mean()
    for e in flagged:
        # the shortcut decides the whole class: scored whole, enriched in women
        assert e["class"] == "nurse" and e["size"] == e["class_size"], e["text"]
        assert "gender = 'female'" in e["text"]
        others = by_cluster.drop(e["cluster"])
        assert len(others) > 0
        assert by_cluster[e["cluster"]] >= 2 * others.max(), by_cluster.to_dict()
