"""A report that leads with the answer and that can be sent: verdicts first, changes apart from
risks, every table downloadable, no path of the machine with ``redact``."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest
from markupsafe import escape

from bias_audit.report import load_run, render_report
from bias_audit.report._redact import REDACTED, config_dir, strip_comments
from bias_audit.report._render import lower_is_better

from .runfolder import SECRET_COMMENT, make_run_folder, project_dir
from .test_render import charts

_TABLE = re.compile(r'<div class="table-wrap" data-table="([\w-]+)">(.*?)</div>', re.S)


def tables(html: str) -> dict[str, tuple[list[list[str]], list[list[str]]]]:
    """name -> (shown rows, CSV rows incl. header) of every table of the page."""
    out = {}
    for name, body in _TABLE.findall(html):
        shown = [
            re.findall(r"<td>(.*?)</td>", row, re.S)
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body.split("<tbody>")[1], re.S)
        ]
        href = re.search(r'<a class="csv" href="([^"]+)" download="[^"]+\.csv">', body)
        assert href, f"table {name} has no CSV link"
        assert href.group(1).startswith("data:text/csv;charset=utf-8,")
        text = urllib.parse.unquote(href.group(1).split(",", 1)[1])
        out[name] = (shown, list(csv.reader(io.StringIO(text))))
    return out


def first_screen(html: str) -> str:
    return html[html.index("<body>") : html.index('<section id="findings">')]


@pytest.fixture(scope="module")
def redacted(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("send") / "report.html"
    return render_report(run_dir, out=out, redact=True).read_text(encoding="utf-8")


def test_verdicts_first_with_every_criterion(run_dir: Path, report_html: str) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    top = first_screen(report_html)
    assert "sha256" not in top and str(project_dir(run_dir)) not in top
    cards = re.findall(r'<article class="verdict status-(\w+)" data-model="([^"]*)">', top)
    assert cards == [(v["status"], str(escape(v["model"]))) for v in summary["verdicts"]]
    assert {v["status"] for v in summary["verdicts"]} == {"fail", "concern"}
    assert any("link" in c for v in summary["verdicts"] for c in v["caveats"])
    for v in summary["verdicts"]:
        card = top[top.index(f'data-model="{escape(v["model"])}"') :].split("</article>")[0]
        assert str(escape(v["headline"])) in card
        for c in v["criteria"]:
            row = f"<td>{escape(c['label'])}</td><td>{c['value']:.3f}".rstrip("0")
            assert row in card or f"<td>{escape(c['label'])}</td><td>{c['value']:.3g}" in card
            assert f"[{c['ci_low']:.3f}".rstrip("0").rstrip(".") in card
            assert f'<tr class="crit-{c["status"]}">' in card
        for cav in v["caveats"]:
            assert str(escape(cav["text"])) in card
            assert "link" not in cav or f'href="{cav["link"]}"' in card
    for w in summary["warnings"]:
        assert w["code"] in top
    # The scoreboard: one column per model, every row of the contract.
    shown, rows = tables(top)["scoreboard"]
    assert rows[0] == ["", *[b["model"] for b in summary["scoreboard"]]]
    by_key = {r[0]: r[1:] for r in rows[1:]}
    for j, b in enumerate(summary["scoreboard"]):
        for key in ("accuracy", "confounder_mass", "confounder_lift", "flip_rate", "flip_excess"):
            assert float(by_key[key][j]) == pytest.approx(b[key]["value"])
        assert float(by_key["worst_group_accuracy"][j]) == pytest.approx(
            b["worst_group_accuracy"]["value"]
        )


def test_changes_are_not_risks(run_dir: Path, report_html: str) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    body = report_html[
        report_html.index('<section id="findings">') : report_html.index('<section id="attention">')
    ]
    risks = body[: body.index("Changes between models")]
    changes = body[body.index("Changes between models") :]
    shown, rows = tables(body)["changes"]
    assert len(shown) == len(summary["changes"]) == len(rows) - 1
    for c, row in zip(summary["changes"], shown, strict=True):
        assert str(escape(c["text"])) not in risks
        assert row[0] == str(escape(c["text"])) and row[1] == c["direction"]
    classes = re.findall(r'<tr class="dir-(\w+)">', changes)
    assert classes == [c["direction"] for c in summary["changes"]]
    assert "better" in classes


def test_every_table_downloads_its_rows(run_dir: Path, report_html: str) -> None:
    found = tables(report_html)
    n_wraps = report_html.count('<div class="table-wrap"')
    assert len(found) == n_wraps >= 9
    data = load_run(run_dir)
    for name in ("gaps", "fairness", "comparisons", "skipped"):
        _, rows = found[name]
        frame = getattr(data, name)
        assert len(rows) == len(frame) + 1
    # Full precision: the comparisons CSV holds the parquet's numbers, not the rounded ones.
    _, rows = found["comparisons"]
    header = rows[0]
    got = pd.DataFrame(rows[1:], columns=header)
    for col in ("diff", "ci_low", "ci_high", "p_adjusted"):
        want = data.comparisons[col].to_numpy(dtype=float)
        assert got[col].astype(float).to_numpy() == pytest.approx(want, rel=1e-12)
    # Display rows and CSV rows agree in number for every table.
    for name, (shown, rows) in found.items():
        assert len(shown) <= len(rows) - 1, name


def test_csv_escapes_and_neutralises_formulas(tmp_path: Path) -> None:
    from bias_audit.report._tables import Table

    t = Table.of("x", ["a", "b"], [['=HYPERLINK("x")', -0.5], ['a,b\n"c"', None]])
    text = urllib.parse.unquote(t.csv_uri.split(",", 1)[1])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["a", "b"], ['\'=HYPERLINK("x")', "-0.5"], ['a,b\n"c"', ""]]
    assert not re.search(r'[<>"\s#&]', t.csv_uri)


def test_gap_table_names_worse_cell_by_direction(run_dir: Path, report_html: str) -> None:
    gaps = pd.read_parquet(run_dir / "gaps.parquet")
    _, rows = tables(report_html)["gaps"]
    got = pd.DataFrame(rows[1:], columns=rows[0])
    assert {"worse_cell", "better_cell", "lower_is_better"} <= set(got.columns)
    for r, g in zip(gaps.itertuples(), got.itertuples(), strict=True):
        values = (r.worst_value, r.best_value)
        if r.metric in ("mass:confounder", "flip:confounder"):
            # more attention or flips is worse: the worse cell has the larger value
            assert g.worse_cell == r.best_cell and float(g.worse_value) == max(values)
        else:
            assert g.worse_cell == r.worst_cell and float(g.worse_value) == min(values)


@pytest.mark.parametrize(
    ("metric", "lower"),
    [
        ("accuracy", False),
        ("mass:confounder", True),
        ("mass:confounder@gradcam++", True),
        ("mass:hair", True),
        ("mass:causal", False),
        ("mass:coat", False),
        ("flip:confounder", True),
        ("flip:causal", False),
        ("lift:background", True),
    ],
)
def test_lower_is_better(metric: str, lower: bool) -> None:
    assert lower_is_better(metric, ["face", "hair"]) is lower


def test_lift_has_error_bars_on_every_panel_and_a_line_at_one(report_html: str) -> None:
    fig = charts(report_html)["fig-lift"]
    axes = {t.get("xaxis", "x") for t in fig["data"]}
    assert axes == {"x", "x2", "x3"}
    for axis in axes:
        bars = [t for t in fig["data"] if t.get("xaxis", "x") == axis and "error_y" in t]
        assert len(bars) == 2, axis  # one per model (the small cells have none)
    lines = fig["layout"]["shapes"]
    assert sorted(s["yref"] for s in lines) == ["y", "y2", "y3"]
    assert all(s["y0"] == s["y1"] == 1.0 for s in lines)


def test_baseline_markers_share_their_models_slot(report_html: str) -> None:
    fig = charts(report_html)["fig-flip"]
    assert fig["layout"]["scattermode"] == "group"
    bars = {t["offsetgroup"] for t in fig["data"] if t["type"] == "bar"}
    marks = [t for t in fig["data"] if t["type"] == "scatter"]
    assert marks and {t["offsetgroup"] for t in marks} == bars


def test_every_method_has_its_panels(run_dir: Path, report_html: str) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    groups = pd.read_parquet(run_dir / "groups.parquet")
    fig = charts(report_html)["fig-methods-mass-confounder"]
    titles = [fig["layout"][k]["title"]["text"] for k in ("xaxis", "xaxis2")]
    assert titles == summary["methods"]
    second = summary["methods"][1]
    rows = groups[(groups["metric"] == f"mass:confounder@{second}") & (groups["model"] == "biased")]
    ys = [y for t in fig["data"] if t["xaxis"] == "x2" and t["legendgroup"] == "biased"
          for y in t["y"]]  # fmt: skip
    assert sorted(ys) == pytest.approx(sorted(rows["value"]))


def test_paths_relative_to_the_config(run_dir: Path, report_html: str) -> None:
    data = load_run(run_dir)
    project = project_dir(run_dir)
    assert config_dir(data.summary, data.config_text) == project
    scope = report_html[report_html.index('<section id="scope">') :]
    assert '<dd class="mono">data/manifest.csv</dd>' in scope
    assert "<td>models/biased.pt</td>" in scope
    # A path inside a warning is made relative too.
    assert "Images of 96 px in data were resized" in report_html


def test_redact_drops_every_path_and_comment(run_dir: Path, redacted: str) -> None:
    rest = redacted
    for root in (str(run_dir.resolve().parent), str(Path.home()), str(Path.cwd())):
        assert root not in rest
        assert urllib.parse.quote(root, safe="") not in rest
    assert not re.search(r"(?<![\w.:/])/(tmp|home|root|work|Users)/", rest)
    assert SECRET_COMMENT not in rest
    assert REDACTED in rest
    assert str(escape('manifest = "[redacted]"')) in rest
    # What the auditor needs stays.
    summary = json.loads((run_dir / "summary.json").read_text())
    for v in summary["verdicts"]:
        assert str(escape(v["headline"])) in rest
    assert summary["models"][0]["sha256"] in rest


def test_strip_comments_keeps_hashes_in_strings() -> None:
    text = "# top\ntitle = \"a # b\"  # note\n[data]\nx = 'c#d' # e\n"
    assert strip_comments(text) == "title = \"a # b\"\n[data]\nx = 'c#d'\n"


def test_cli_redact(tmp_path: Path) -> None:
    path = make_run_folder(tmp_path / "run", gallery_per_cell=2, n_per_cell=20, small=None)
    proc = subprocess.run(
        [sys.executable, "-m", "bias_audit.cli", "-q", "report", str(path), "--redact"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    html = (path / "report.html").read_text(encoding="utf-8")
    assert str(tmp_path) not in html and SECRET_COMMENT not in html
    assert html.count("Download CSV") >= 9


def test_run_offers_redact() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bias_audit.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "--redact" in proc.stdout
