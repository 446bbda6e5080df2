"""Discovery end to end on the watermark world: an audit with no [regions] and no mask/bbox
columns finds the biased model's shortcut and none in the clean model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bias_audit.pipelines import audit
from bias_audit.report import render_report
from tests.discovery.watermark import build_world

# These tests train models or run whole audits: the slow tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("watermark"))


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    return audit(world["config"], out=tmp_path_factory.mktemp("run") / "r", progress=False)


def _flagged(summary, model):
    return [e for e in summary["discovery"] if e["model"] == model and e["flagged"]]


def test_an_audit_without_regions_runs_and_says_what_needs_annotations(run):
    assert run.summary["data"]["regions"] == []
    codes = [w["code"] for w in run.summary["warnings"]]
    assert "no_regions" in codes
    # role metrics are there but NaN: nothing was measured without masks
    assert run.samples["mass:confounder"].isna().all()
    # predictions and group statistics still work
    assert set(run.groups["metric"]) >= {"accuracy"}
    assert run.samples["pred"].isin(["cross", "ring"]).all()


def test_samples_get_the_cluster_of_their_predicted_class(run):
    s = run.samples
    assert "cluster" in s and "feature_cluster" in s
    ok = s["cluster"].notna()
    assert ok.mean() > 0.95
    assert (s.loc[ok, "cluster"].str.split("/").str[0] == s.loc[ok, "pred"]).all()
    keys = {"model", "class", "cluster", "size", "accuracy", "enrichment",
            "intervention_score", "flagged"}  # fmt: skip
    for e in run.summary["discovery"]:
        assert keys <= set(e)
        n = int(((s["model"] == e["model"]) & (s[_column(e)] == e["cluster"])).sum())
        assert n == e["size"]


def _column(entry):
    return "cluster" if entry["view"] == "map" else "feature_cluster"


def test_the_biased_model_has_a_flagged_watermark_cluster_in_ring(run):
    s = run.samples
    flagged = [e for e in _flagged(run.summary, "biased") if e["class"] == "ring"]
    assert flagged, [e["text"] for e in run.summary["discovery"] if e["model"] == "biased"]
    ring_marked = s[(s["model"] == "biased") & (s["pred"] == "ring") & (s["watermark"] == "yes")]
    best = None
    for e in flagged:
        members = s[(s["model"] == "biased") & (s[_column(e)] == e["cluster"])]
        share = (members["watermark"] == "yes").mean()
        held = members["id"].isin(ring_marked["id"]).sum() / len(ring_marked)
        if share >= 0.8 and held > 0.5:
            best = e
    assert best is not None, [(e["cluster"], e["text"]) for e in flagged]
    wm = {x["attribute"]: x for x in best["enrichment"]}["watermark"]
    assert wm["value"] == "yes" and "watermark = 'yes'" in best["text"]


def test_the_clean_model_has_no_flagged_cluster(run):
    assert _flagged(run.summary, "clean") == [], [
        e["text"] for e in run.summary["discovery"] if e["model"] == "clean"
    ]


def test_same_seed_same_clusters(world, run, tmp_path):
    # the biased model alone: the clusters of one model do not depend on the others
    text = world["config"].read_text()
    one = tmp_path / "one.toml"
    one.write_text(text[: text.index('[[models]]\nname = "clean"')])
    again = audit(one, out=tmp_path / "again", progress=False)
    cols = ["id", "cluster", "feature_cluster"]
    first = run.samples[run.samples["model"] == "biased"][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again.samples[cols].reset_index(drop=True))
    mine = [e for e in run.summary["discovery"] if e["model"] == "biased"]
    assert mine == again.summary["discovery"]


def test_the_report_shows_discovered_strategies(run):
    html = render_report(run.run_dir).read_text()
    assert 'id="discovery"' in html and "Discovered strategies" in html
    assert "data:image/png;base64," in html
    assert "no causal or confounder regions are set" in html
    first = html.index("predicted ring · maps", html.index("biased · predicted ring"))
    assert html.index("flagged</strong>", first) < html.index("</table>", first)


def test_discovery_inputs_ride_in_the_parts_not_in_the_samples(run):
    # one explain pass: the step keeps each map (downsampled) and the head's input in its part
    assert not [c for c in run.samples if c.startswith("discovery:")]
    part = pd.read_parquet(run.run_dir / "progress" / "biased" / "part-000000.parquet")
    size = 16  # the [discovery] default map_size
    maps = np.stack([np.frombuffer(b, dtype=np.float16) for b in part["discovery:map"]])
    assert maps.shape == (len(part), size * size)
    sums = maps.astype(np.float32).sum(axis=1)
    np.testing.assert_allclose(sums[part["map_ok"].to_numpy()], 1.0, atol=0.02)
    feats = [np.frombuffer(b, dtype=np.float16) for b in part["discovery:features"]]
    assert len({f.size for f in feats}) == 1 and feats[0].size > 1
    assert np.isfinite(np.stack(feats).astype(np.float32)).all()


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_held_out_seeds_find_the_watermark_and_nothing_in_the_clean_model(seed, tmp_path):
    # seeds the method was not tuned on (issue 16): data and models are new for each
    world = build_world(tmp_path / "w", seed=seed)
    result = audit(world["config"], out=tmp_path / "r", progress=False)
    s = result.summary
    assert _flagged(s, "clean") == [], [e["text"] for e in _flagged(s, "clean")]
    samples = result.samples
    biased = samples[samples["model"] == "biased"]
    marked = biased[(biased["pred"] == "ring") & (biased["watermark"] == "yes")]
    found = []
    for e in _flagged(s, "biased"):
        members = biased[biased[_column(e)] == e["cluster"]]
        share = (members["watermark"] == "yes").mean()
        held = members["id"].isin(marked["id"]).sum() / len(marked)
        found.append((e["class"], share >= 0.8 and held > 0.5))
    assert ("ring", True) in found, [e["text"] for e in s["discovery"] if e["model"] == "biased"]
