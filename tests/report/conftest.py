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
