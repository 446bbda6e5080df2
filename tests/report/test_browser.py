"""The report in a real browser: no errors, no requests, charts drawn, pictures decoded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .runfolder import HOSTILE_GROUP, HOSTILE_MODEL

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[1] / "_artifacts"


@dataclass
class Visit:
    page: Any
    url: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


def open_report(browser: Any, run_dir: Path) -> Visit:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    visit = Visit(page, (run_dir / "report.html").resolve().as_uri())
    page.on("console", lambda m: visit.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: visit.errors.append(str(e)))
    page.on("request", lambda r: visit.requests.append(r.url))

    def on_dialog(dialog: Any) -> None:
        visit.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(visit.url, wait_until="load")
    page.wait_for_function("document.querySelectorAll('div.chart .main-svg').length > 0")
    return visit


@pytest.fixture(scope="module")
def visit(browser: Any, run_dir: Path) -> Any:
    v = open_report(browser, run_dir)
    yield v
    v.page.close()


@pytest.fixture(scope="module")
def hostile_visit(browser: Any, hostile_dir: Path) -> Any:
    v = open_report(browser, hostile_dir)
    yield v
    v.page.close()


def test_no_console_error_and_no_request(visit: Visit) -> None:
    visit.page.wait_for_timeout(300)
    assert visit.errors == []
    assert visit.dialogs == []
    others = [u for u in visit.requests if u != visit.url and not u.startswith("data:")]
    assert others == []
    assert visit.url in visit.requests


def test_every_chart_renders(visit: Visit) -> None:
    charts = visit.page.evaluate(
        """() => Array.from(document.querySelectorAll('div.chart')).map(el => ({
              id: el.id, traces: (el.data || []).length,
              svg: !!el.querySelector('.main-svg'),
              width: el.getBoundingClientRect().width}))"""
    )
    assert len(charts) >= 8
    for c in charts:
        assert c["traces"] > 0 and c["svg"] and c["width"] > 100, c


def test_every_gallery_image_decodes(visit: Visit) -> None:
    visit.page.wait_for_function(
        "Array.from(document.querySelectorAll('#gallery img')).every(i => i.complete)"
    )
    images = visit.page.evaluate(
        """() => Array.from(document.querySelectorAll('#gallery img.zoomable')).map(
              i => [i.complete, i.naturalWidth, i.naturalHeight])"""
    )
    assert len(images) > 0
    assert all(done and w > 0 and h > 0 for done, w, h in images)


def test_zoom_on_click(visit: Visit) -> None:
    page = visit.page
    first = page.locator("#gallery img.zoomable").nth(1)
    first.scroll_into_view_if_needed()
    first.click()
    box = page.locator("#lightbox")
    assert box.is_visible()
    assert page.locator("#lightbox img").get_attribute("src") == first.get_attribute("src")
    width = page.evaluate("document.querySelector('#lightbox img').getBoundingClientRect().width")
    assert width > first.bounding_box()["width"] * 2
    page.keyboard.press("Escape")
    assert not box.is_visible()


def test_print_stylesheet(visit: Visit) -> None:
    page = visit.page
    page.emulate_media(media="print")
    try:
        toc = page.evaluate("getComputedStyle(document.querySelector('nav.toc')).display")
        assert toc == "none"
        brk = page.evaluate("getComputedStyle(document.querySelector('#attention')).breakBefore")
        assert brk == "page"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        pdf = page.pdf(path=str(ARTIFACTS / "report.pdf"), format="A4")
        assert pdf.count(b"/Type /Page") > len(("scope", "summary", "attention"))
    finally:
        page.emulate_media(media="screen")


def test_hostile_strings_show_as_text(hostile_visit: Visit) -> None:
    page = hostile_visit.page
    page.wait_for_timeout(300)
    assert hostile_visit.dialogs == []
    assert hostile_visit.errors == []
    text = page.inner_text("body")
    assert HOSTILE_GROUP in text
    assert HOSTILE_MODEL in text
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    # Plotly labels show the same text, not markup.
    legend = page.evaluate(
        "Array.from(document.querySelectorAll('#fig-mass .legendtext')).map(t => t.textContent)"
    )
    assert HOSTILE_MODEL in legend
    others = [
        u for u in hostile_visit.requests if u != hostile_visit.url and not u.startswith("data:")
    ]
    assert others == []


def test_summary_screenshot(visit: Visit) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = visit.page
    page.evaluate("window.scrollTo(0, 0)")
    path = ARTIFACTS / "report_summary.png"
    bottom = page.evaluate(
        "document.querySelector('#attention').getBoundingClientRect().top + window.scrollY"
    )
    page.screenshot(
        path=str(path), clip={"x": 0, "y": 0, "width": 1280, "height": bottom}, full_page=True
    )
    assert path.stat().st_size > 10_000
