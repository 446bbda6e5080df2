"""The HTML audit report: one self-contained file built from a run folder.

Imported on demand only (``bias_audit.render_report`` is lazy), because it loads plotly and
jinja2.
"""

from __future__ import annotations

from bias_audit.report._load import ReportData, load_run
from bias_audit.report._render import render_report

__all__ = ["ReportData", "load_run", "render_report"]
