"""The report in a real browser: no errors, no requests, charts drawn, pictures decoded."""

from __future__ import annotations

import csv
import json
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


# -- the first screen, downloads, navigation, print (issue 12) ----------------------------------

FIRST_SCREEN = {"width": 1400, "height": 900}


@pytest.fixture(scope="module")
def wide(browser: Any, run_dir: Path) -> Any:
    page = browser.new_page(viewport=FIRST_SCREEN, accept_downloads=True)
    visit = Visit(page, (run_dir / "report.html").resolve().as_uri())
    page.on("pageerror", lambda e: visit.errors.append(str(e)))
    page.goto(visit.url, wait_until="load")
    page.wait_for_function("document.querySelectorAll('div.chart .main-svg').length > 0")
    yield visit
    page.close()


def _box(page: Any, selector: str) -> dict[str, float]:
    return page.evaluate(
        f"""() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();
              return {{top: r.top, bottom: r.bottom, left: r.left, right: r.right}}; }}"""
    )


def test_first_screen_shows_verdicts_and_scoreboard(wide: Visit, run_dir: Path) -> None:
    page = wide.page
    page.evaluate("window.scrollTo(0, 0)")
    summary = json.loads((run_dir / "summary.json").read_text())
    header = _box(page, "header.top")
    cards = page.locator("article.verdict")
    assert cards.count() == len(summary["verdicts"])
    for i, v in enumerate(summary["verdicts"]):
        card = cards.nth(i)
        box = card.bounding_box()
        assert box["y"] >= header["bottom"] - 1 and box["y"] + box["height"] <= 900, v["model"]
        text = card.inner_text()
        assert v["model"] in text and v["status"] in text.lower() and v["headline"] in text
    board = _box(page, "table.board")
    assert header["bottom"] - 1 <= board["top"] and board["bottom"] <= 900
    warnings = _box(page, ".warnings")
    assert warnings["bottom"] <= 900
    visible = page.evaluate("document.elementFromPoint(700, 890) !== null")
    assert visible
    top_text = page.evaluate(
        """() => Array.from(document.querySelectorAll('body *')).filter(el => {
              const r = el.getBoundingClientRect();
              return r.bottom > 0 && r.top < 900 && el.children.length === 0;
           }).map(el => el.textContent).join(' ')"""
    )
    assert "sha256" not in top_text and "fingerprint" not in top_text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "report_first_screen.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 20_000


def test_every_csv_download_holds_its_table(wide: Visit, tmp_path: Path) -> None:
    page = wide.page
    links = page.locator("a.csv")
    n = links.count()
    assert n == page.locator("div.table-wrap").count() >= 9
    for i in range(n):
        link = links.nth(i)
        wrap = link.locator("xpath=ancestor::div[@class='table-wrap']")
        shown = wrap.locator("tbody tr").count()
        header = [h.strip() for h in wrap.locator("thead th").all_inner_texts()]
        link.scroll_into_view_if_needed()
        with page.expect_download() as info:
            link.click()
        target = tmp_path / f"{i}.csv"
        info.value.save_as(target)
        rows = list(csv.reader(target.open(encoding="utf-8", newline="")))
        # the CSV may carry more fields than shown (a change: its models and metric apart)
        assert len(rows[0]) >= len(header), info.value.suggested_filename
        note = wrap.locator(".note").all_inner_texts()
        if note and "of" in note[0]:
            assert len(rows) - 1 > shown  # truncated on the page, whole in the CSV
        else:
            assert len(rows) - 1 == shown, info.value.suggested_filename
        assert info.value.suggested_filename.endswith(".csv")


def test_navigation_keeps_headings_below_the_header(wide: Visit) -> None:
    page = wide.page
    hrefs = page.eval_on_selector_all("nav.toc a", "els => els.map(e => e.getAttribute('href'))")
    assert len(hrefs) >= 8
    for href in hrefs:
        page.click(f"nav.toc a[href='{href}']")
        page.wait_for_timeout(150)
        header = _box(page, "header.top")
        target = _box(page, f"{href} h2")
        # In view and not under the sticky header (the last sections may not reach the top).
        assert target["top"] >= header["bottom"] - 1, href
        assert target["bottom"] <= FIRST_SCREEN["height"], href
    page.evaluate("window.scrollTo(0, 0)")


def test_print_keeps_each_chart_whole(wide: Visit) -> None:
    page = wide.page
    page.emulate_media(media="print")
    try:
        styles = page.evaluate(
            """() => Array.from(document.querySelectorAll('figure.chart-box')).map(f => ({
                  brk: getComputedStyle(f).breakInside, h: f.getBoundingClientRect().height,
                  axes: f.querySelectorAll('.xtick').length}))"""
        )
        assert styles
        for s in styles:
            assert s["brk"] == "avoid" and s["axes"] > 0, s
            # An A4 page at 96 dpi is 1123 px tall: a chart taller than that would split.
            assert s["h"] < 1000, s
        hidden = page.evaluate("getComputedStyle(document.querySelector('a.csv')).display")
        assert hidden == "none"
    finally:
        page.emulate_media(media="screen")


def test_baseline_markers_sit_over_their_models_bar(wide: Visit) -> None:
    page = wide.page
    page.locator("#fig-flip").scroll_into_view_if_needed()
    centres = page.evaluate(
        """() => {
          const gd = document.getElementById('fig-flip');
          const cx = el => { const r = el.getBoundingClientRect(); return r.left + r.width / 2; };
          const sub = gd.querySelector('.subplot.xy');
          return {
            bars: Array.from(sub.querySelectorAll('.barlayer .point path')).map(cx),
            marks: Array.from(sub.querySelectorAll('.scatterlayer .point')).map(cx),
          };
        }"""
    )
    assert centres["marks"] and centres["bars"]
    for x in centres["marks"]:
        assert min(abs(x - b) for b in centres["bars"]) < 2.0, (x, centres["bars"])


def test_redacted_report_shows_no_path(browser: Any, run_dir: Path, tmp_path: Path) -> None:
    from bias_audit.report import render_report

    out = render_report(run_dir, out=tmp_path / "sent.html", redact=True)
    page = browser.new_page(viewport=FIRST_SCREEN)
    try:
        page.goto(out.resolve().as_uri(), wait_until="load")
        everything = page.evaluate(
            """() => document.body.innerText + ' ' + Array.from(document.querySelectorAll('*'))
                 .flatMap(el => Array.from(el.attributes).map(a => decodeURIComponent(
                   a.value.startsWith('data:text/csv') ? a.value : ''))).join(' ')"""
        )
        for root in (str(run_dir.resolve().parent), str(Path.home())):
            assert root not in everything
        assert "[redacted]" in everything
    finally:
        page.close()
