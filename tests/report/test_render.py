from __future__ import annotations

import functools
import html as htmlmod
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import plotly.offline
import pytest
from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate
from markupsafe import escape

import bias_audit
import bias_audit.report as report
from bias_audit.errors import ConfigError, RunError
from bias_audit.report import load_run, render_report
from bias_audit.report._figures import rate_gaps
from bias_audit.report._render import script_json

from .runfolder import HOSTILE_GROUP, HOSTILE_MODEL, cell_of

SECTIONS = (
    "verdict",
    "findings",
    "attention",
    "performance",
    "comparison",
    "interventions",
    "gallery",
    "scope",
    "methods",
)
_CHART = re.compile(r'<script type="application/json" id="(fig-[\w-]+)-data">(.*?)</script>', re.S)


def charts(html: str) -> dict[str, dict]:
    return {fid: json.loads(payload) for fid, payload in _CHART.findall(html)}


def without_plotly(html: str) -> str:
    js = plotly.offline.get_plotlyjs()
    assert html.count(js) == 1, "plotly.js must be inlined exactly once"
    return html.replace(js, "")


def test_sections_in_order(report_html: str) -> None:
    positions = [report_html.index(f'<section id="{s}">') for s in SECTIONS]
    assert positions == sorted(positions)


def test_self_contained(report_html: str) -> None:
    rest = without_plotly(report_html)
    assert "http://" not in rest and "https://" not in rest and "//cdn" not in rest
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', rest)
    assert srcs and all(
        s.startswith(("data:image/jpeg;base64,", "data:image/png;base64,")) for s in srcs
    )
    assert not re.search(r"<(link|iframe|object|embed)\b", rest)
    assert re.findall(r"<script\b[^>]*\ssrc=", rest) == []


def test_every_chart_has_data(report_html: str) -> None:
    figs = charts(report_html)
    divs = re.findall(r'<div class="chart" id="([\w-]+)"', report_html)
    assert set(divs) == set(figs)
    assert {
        "fig-mass",
        "fig-lift",
        "fig-confounder-box",
        "fig-accuracy",
        "fig-rate-gaps",
        "fig-comparison-mass-causal",
        "fig-comparison-mass-confounder",
        "fig-methods-mass-confounder",
        "fig-flip",
        "fig-drop",
    } <= set(figs)
    for fid, fig in figs.items():
        assert fig["data"], fid


def _trace_points(fig: dict, name: str, xaxis: str = "x") -> dict[str, tuple]:
    """label -> (y, plus, minus) over the traces of a model on one subplot."""
    out = {}
    for t in fig["data"]:
        if t.get("legendgroup") != name or t.get("xaxis", "x") != xaxis or t["type"] != "bar":
            continue
        err = t.get("error_y")
        for i, x in enumerate(t["x"]):
            out[x] = (
                t["y"][i],
                err["array"][i] if err else None,
                err["arrayminus"][i] if err else None,
                "pattern" in t["marker"],
            )
    return out


def test_mass_chart_matches_groups_table(run_dir: Path, report_html: str) -> None:
    groups = pd.read_parquet(run_dir / "groups.parquet")
    fig = charts(report_html)["fig-mass"]
    for role, axis in (("causal", "x"), ("confounder", "x2"), ("background", "x3")):
        points = _trace_points(fig, "biased", axis)
        rows = groups[(groups["model"] == "biased") & (groups["metric"] == f"mass:{role}")]
        assert len(points) == len(rows) == 4
        for r in rows.itertuples():
            label = htmlmod.escape(f"{r.cell} (n={r.n})", quote=False) + (
                " \u2020" if r.small else ""
            )
            y, plus, minus, hatched = points[label]
            assert y == pytest.approx(r.value)
            if r.small:
                assert plus is None and hatched  # small: no error bar, drawn differently
            else:
                assert plus == pytest.approx(r.ci_high - r.value)
                assert minus == pytest.approx(r.value - r.ci_low)


def test_accuracy_chart_and_worst_group_show_the_groups_table(
    run_dir: Path, report_html: str
) -> None:
    # The report draws accuracy from groups.parquet only: no interval of its own.
    groups = pd.read_parquet(run_dir / "groups.parquet")
    acc = groups[(groups["metric"] == "accuracy") & ~groups["small"]]
    fig = charts(report_html)["fig-accuracy"]
    for model in ("biased",):
        points = _trace_points(fig, model, "x")
        for r in acc[acc["model"] == model].itertuples():
            label = htmlmod.escape(f"{r.cell} (n={r.n})", quote=False)
            y, plus, minus, _ = points[label]
            assert (y, y + plus, y - minus) == pytest.approx((r.value, r.ci_high, r.ci_low))
    summary = json.loads((run_dir / "summary.json").read_text())
    w = summary["models"][0]["worst_group"]
    row = acc[(acc["model"] == "biased") & (acc["cell"] == w["cell"])].iloc[0]
    assert row["value"] == acc[acc["model"] == "biased"]["value"].min()
    shown = f"<td>{escape(w['cell'])}</td><td>{row['n']}</td><td>{row['value']:.3g}</td>"
    assert shown + f"<td>[{row['ci_low']:.3f}, {row['ci_high']:.3f}]</td>" in report_html


def test_rate_gaps_match_fairlearn(run_dir: Path) -> None:
    data = load_run(run_dir)
    gaps = rate_gaps(data)
    assert len(gaps) == 2 * 2  # models x classes, one attribute
    for r in gaps.itertuples():
        part = data.samples[data.samples["model"] == r.model]
        for fn, got in ((true_positive_rate, r.tpr_gap), (false_positive_rate, r.fpr_gap)):
            metric = functools.update_wrapper(functools.partial(fn, pos_label=r[3]), fn)
            mf = MetricFrame(
                metrics=metric,
                y_true=part["label"],
                y_pred=part["pred"],
                sensitive_features=part["gender"],
            )
            assert got == pytest.approx(mf.difference(method="between_groups"))


def test_box_plot_quantiles(run_dir: Path, report_html: str) -> None:
    data = load_run(run_dir)
    s = data.samples.assign(cell=cell_of(data.samples))
    fig = charts(report_html)["fig-confounder-box"]
    trace = next(t for t in fig["data"] if t["name"] == "debiased")
    medians = s[s["model"] == "debiased"].groupby("cell", sort=False)["mass:confounder"].median()
    assert trace["median"] == pytest.approx(list(medians))
    # Aggregated: a handful of numbers per cell, never one point per image.
    assert "y" not in trace


def test_findings_by_severity(run_dir: Path, report_html: str) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    order = {"high": 0, "medium": 1, "low": 2, "info": 3}
    risks = [f for f in summary["findings"] if f["kind"] == "risk"]
    infos = [f for f in summary["findings"] if f["kind"] == "info"]
    assert risks and infos
    expected = sorted(risks, key=lambda f: order[f["severity"]])
    body = report_html[
        report_html.index('<section id="findings">') : report_html.index('<section id="attention">')
    ]
    shown = re.findall(r'<li class="finding sev-(\w+)">', body[: body.index("Changes between")])
    assert shown == [f["severity"] for f in expected]
    # Class effects are listed apart, after the risks and the changes, as information.
    info_part = body[body.index("Class effects and notes") :]
    for f in infos:
        assert str(escape(f["text"])) in info_part
        assert str(escape(f["text"])) not in body[: body.index("Class effects and notes")]
    positions = [body.index(str(escape(f["text"]))) for f in expected]
    assert positions == sorted(positions)
    top = expected[0]
    assert f"[{top['ci_low']:.3f}".rstrip("0") in body and str(top["p_adjusted"]) in body


def test_cells_show_n(run_dir: Path, report_html: str) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    labels = {
        x
        for fig in charts(report_html).values()
        for t in fig["data"]
        for x in t.get("x") or []
        if isinstance(x, str)
    }
    for c in summary["data"]["cells"]:
        assert f"<td>{escape(c['cell'])}</td><td>{c['n']}</td>" in report_html
        label = htmlmod.escape(f"{c['cell']} (n={c['n']})", quote=False)
        assert label + (" \u2020" if c["small"] else "") in labels


def test_methods_and_provenance(run_dir: Path, report_html: str) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    body = report_html[report_html.index('<section id="methods">') :]
    for term in (
        "mass",
        "area",
        "lift",
        "rank",
        "pointing",
        "loc_iou",
        "flip",
        "drop",
        "random-patch baseline",
        "Wilson",
        "bootstrap",
        "permutation",
        "Wilcoxon",
        "Holm",
    ):
        assert f"<dt>{term}" in body, term
    assert str(escape(summary["config"])) in body
    assert summary["data"]["fingerprint"] in body
    for m in summary["models"]:
        assert m["sha256"] in body
    assert summary["provenance"]["torch"] in body and summary["created"] in body


def test_hostile_strings_are_text(hostile_html: str) -> None:
    rest = without_plotly(hostile_html)
    for raw in (HOSTILE_GROUP, HOSTILE_MODEL, "<script>alert(3)</script>"):
        assert raw not in rest
    assert htmlmod.escape(HOSTILE_GROUP, quote=False) in rest
    assert htmlmod.escape(HOSTILE_MODEL, quote=False) in rest
    n_charts = len(charts(hostile_html))
    # Our blocks only: chart data, plotly.js and the report script.
    assert rest.count("<script") == n_charts + 2
    assert rest.count("</script>") == n_charts + 2
    # In charts the names are entity-escaped for plotly's label markup.
    names = {t.get("name") for fig in charts(hostile_html).values() for t in fig["data"]}
    assert htmlmod.escape(HOSTILE_MODEL, quote=False) in names


def test_script_json_escapes() -> None:
    out = str(script_json({"a": "</script><!--&\u2028"}))
    assert "<" not in out and ">" not in out and "&" not in out and "\u2028" not in out
    assert json.loads(out) == {"a": "</script><!--&\u2028"}


def test_gallery_caps(tmp_path: Path, run_dir: Path) -> None:
    path = Path(shutil.copytree(run_dir, tmp_path / "copy"))
    html = render_report(path, max_per_cell=2).read_text()
    body = html[html.index('<section id="gallery">') : html.index('<section id="methods">')]
    assert body.count('<figure class="sample">') == 2 * 4
    # Confounder-reliant samples come first in each cell.
    reasons = re.findall(r"label [^<]* \u00b7 <i>(\w+)</i>", body)
    assert reasons == ["confounder"] * 8
    html = render_report(path, max_total=3).read_text()
    assert html.count('<figure class="sample">') == 3
    # Each sample: the image with outlines plus one overlay per model and method.
    summary = json.loads((path / "summary.json").read_text())
    n_models, n_methods = len(summary["models"]), len(summary["methods"])
    assert n_methods == 2
    assert html.count('class="zoomable"') == 3 * (1 + n_models * n_methods)
    for model in summary["models"]:
        for method in summary["methods"]:
            assert f"<span>{escape(model['name'])} \u00b7 {method}</span>" in html


def test_out_and_force(tmp_path: Path, run_dir: Path) -> None:
    path = Path(shutil.copytree(run_dir, tmp_path / "copy"))
    target = tmp_path / "elsewhere" / "audit.html"
    assert render_report(path, out=target) == target and target.stat().st_size > 0
    with pytest.raises(RunError, match="audit.html"):
        render_report(path, out=target, force=False)
    assert bias_audit.render_report is render_report


@pytest.mark.parametrize("arg", ["max_per_cell", "max_total"])
def test_bad_caps(run_dir: Path, arg: str) -> None:
    with pytest.raises(ConfigError, match=arg):
        render_report(run_dir, **{arg: -1})


def test_all_is_complete() -> None:
    public = {
        n
        for n, v in vars(report).items()
        if not n.startswith("_")
        and callable(v)
        and getattr(v, "__module__", "").startswith("bias_audit.report")
    }
    assert public <= set(report.__all__)
    assert all(hasattr(report, n) for n in report.__all__)
