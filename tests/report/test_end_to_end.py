"""The report of a real audit run (tiny world and models of tests/audit), in a real browser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bias_audit.report import load_run, render_report
from tests.audit.conftest import _save_models, _world, write_config

from .test_browser import open_report


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bias_audit.pipelines import audit

    root = tmp_path_factory.mktemp("world")
    world = {"root": root, "manifest": _world(root), **_save_models(root)}
    out = root / "run"
    audit(write_config(world), out=out, progress=False)
    return out


@pytest.mark.slow
def test_report_of_a_real_run(real_run: Path) -> None:
    path = render_report(real_run)
    data = load_run(real_run)
    summary = json.loads((real_run / "summary.json").read_text())
    html = path.read_text()
    for c in summary["data"]["cells"]:
        assert f"<td>{c['cell']}</td><td>{c['n']}</td>" in html
    n_items = len(data.gallery["items"])
    assert html.count('<figure class="sample">') == min(n_items, 60)
    assert html.count('class="zoomable"') == min(n_items, 60) * (1 + len(data.models))
    samples = pd.read_parquet(real_run / "samples.parquet")
    assert set(samples["model"]) == set(data.models)


@pytest.mark.slow
@pytest.mark.browser
def test_real_run_in_browser(real_run: Path, browser: Any) -> None:
    render_report(real_run)
    visit = open_report(browser, real_run)
    try:
        visit.page.wait_for_timeout(300)
        assert visit.errors == []
        assert [u for u in visit.requests if u != visit.url and not u.startswith("data:")] == []
        traces = visit.page.evaluate(
            "Array.from(document.querySelectorAll('div.chart')).map(d => (d.data || []).length)"
        )
        assert traces and all(t > 0 for t in traces)
    finally:
        visit.page.close()
