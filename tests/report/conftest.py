"""Run folders rendered once per session; the browser is launched once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from bias_audit.report import render_report

from .runfolder import make_run_folder


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_run_folder(tmp_path_factory.mktemp("run") / "run")
    render_report(path)
    return path


@pytest.fixture(scope="session")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_run_folder(tmp_path_factory.mktemp("hostile") / "run", hostile=True, seed=1)
    render_report(path)
    return path


@pytest.fixture(scope="session")
def report_html(run_dir: Path) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def hostile_html(hostile_dir: Path) -> str:
    return (hostile_dir / "report.html").read_text(encoding="utf-8")


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright; missing is a failure, not a skip (CI installs it)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (`make browser`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        pytest.fail(f"playwright is not installed ({err}); it is in the dev extra")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()
