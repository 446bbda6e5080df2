"""Assemble the report: load the run folder, build figures and pictures, render the template."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import plotly.io
import plotly.offline
from markupsafe import Markup

from bias_audit.core._naming import ROLES
from bias_audit.errors import ConfigError, RunError
from bias_audit.io._files import write_text
from bias_audit.io._resources import resource_dir
from bias_audit.report._discovery import discovery_context
from bias_audit.report._figures import (
    FigureSpec,
    attention_figures,
    comparison_figures,
    intervention_figures,
    performance_figures,
    rate_gaps,
)
from bias_audit.report._images import REGION_COLORS, data_uri, draw_outlines, overlay_map, thumbnail
from bias_audit.report._load import ReportData, load_run

__all__ = ["render_report", "build_context", "script_json", "SEVERITIES", "METHODS_TEXT"]

SEVERITIES: tuple[str, ...] = ("high", "medium", "low", "info")
THUMB_SIDE = 160

#: Definitions shown in the Methods section, one per metric or procedure.
METHODS_TEXT: tuple[tuple[str, str], ...] = (
    (
        "mass",
        "Attention mass: \u03a3 M\u00b7R / \u03a3 M, the share of the map M inside the "
        "region or role mask R. NaN when the map is all zero or the mask is empty.",
    ),
    ("area", "Area fraction: |R| / (H\u00b7W), the share of the image covered by R."),
    (
        "lift",
        "Lift: mass / area. 1 is what a uniform map gets; above 1, attention concentrates "
        "inside R.",
    ),
    (
        "rank",
        "Rank accuracy: the share of the K most salient pixels that lie inside R, with "
        "K = |R|. NaN as for mass.",
    ),
    (
        "pointing",
        "Pointing game: 1 if the map's maximum lies inside R, else 0. NaN when the map "
        "is all zero or R is empty (an empty mask is not counted as a hit).",
    ),
    (
        "loc_iou",
        "Localisation IoU: binarise the map at 15% of its maximum, keep the largest "
        "connected component, take its bounding box and compute the IoU with R's box.",
    ),
    (
        "flip",
        "Flip: 1 if the prediction changes when the role's pixels are filled (occluded), "
        "else 0; NaN when the image has no such role. The flip rate is its mean.",
    ),
    ("drop", "Drop: the explained class's probability before minus after occluding the role."),
    (
        "random-patch baseline",
        "flip_random / drop_random: the same occlusion applied to a random "
        "patch of the same area, so that an effect can be told apart from the effect of removing "
        "any pixels at all.",
    ),
    (
        "Wilson interval",
        "The 95% Wilson score interval for accuracy in a cell: "
        "(p + z\u00b2/2n \u00b1 z\u221a(p(1\u2212p)/n + z\u00b2/4n\u00b2)) / (1 + z\u00b2/n), "
        "z = 1.96.",
    ),
    (
        "bootstrap",
        "95% percentile intervals for means, resampling images with replacement "
        "within each cell with a fixed seed.",
    ),
    (
        "permutation test",
        "Gaps between groups are tested by permuting group labels between the "
        "two groups and counting how often the permuted gap is at least as large.",
    ),
    (
        "Wilcoxon signed-rank",
        "Two models are compared on the same images: paired differences, "
        "a paired bootstrap CI and a Wilcoxon signed-rank test of a zero median difference.",
    ),
    (
        "Holm",
        "All p-values of one audit are adjusted together with Holm's step-down method: "
        "sort ascending, multiply the i-th smallest of m by (m \u2212 i + 1), keep the running "
        "maximum, cap at 1.",
    ),
    (
        "small cells",
        "Cells with fewer images than min_group_size show n and the mean only: no "
        "interval and no verdict; they are marked \u2020.",
    ),
)


@dataclass(frozen=True)
class Table:
    """A rendered table: header strings and rows of display strings (escaped by the template)."""

    columns: list[str]
    rows: list[list[str]]
    note: str = ""


def script_json(obj: Any) -> Markup:
    """JSON safe inside an HTML ``<script>``: <, >, & and line separators as \\u escapes.

    A user string containing ``</script>`` or ``<!--`` can then not end or alter the block.
    """
    text = obj if isinstance(obj, str) else json.dumps(obj, allow_nan=False)
    for raw, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, esc)
    return Markup(text)  # noqa: S704 -- safe by the escaping above, not user text raw


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "\u2013"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.{digits}f}".rstrip("0").rstrip(".") if "." in f"{v:.{digits}f}" else str(v)
    return str(value)


def _ci(lo: Any, hi: Any) -> str:
    if lo is None or hi is None or any(isinstance(v, float) and math.isnan(v) for v in (lo, hi)):
        return ""
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def _table(frame: pd.DataFrame | None, *, max_rows: int = 200) -> Table | None:
    if frame is None:
        return None
    shown = frame.head(max_rows)
    note = f"first {max_rows} of {len(frame)} rows" if len(frame) > max_rows else ""
    rows = [[_fmt(v) for v in r] for r in shown.itertuples(index=False, name=None)]
    return Table([str(c) for c in frame.columns], rows, note)


def _findings(summary: dict[str, Any], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = {s: i for i, s in enumerate(SEVERITIES)}
    n_of = {str(c.get("cell")): c.get("n") for c in cells}
    items = [f for f in summary.get("findings") or [] if isinstance(f, dict)]
    items = sorted(items, key=lambda f: order.get(str(f.get("severity")), len(order)))
    out = []
    for f in items:
        out.append(
            {
                "severity": str(f.get("severity") or "info"),
                "text": str(f.get("text") or ""),
                "model": f.get("model"),
                "cell": f.get("cell"),
                "n": n_of.get(str(f.get("cell"))),
                "has_numbers": any(
                    f.get(k) is not None for k in ("value", "p_value", "p_adjusted")
                ),
                "metric": f.get("metric"),
                "value": _fmt(f.get("value")),
                "ci": _ci(f.get("ci_low"), f.get("ci_high")),
                "p_value": _fmt(f.get("p_value")),
                "p_adjusted": _fmt(f.get("p_adjusted")),
            }
        )
    return out


def _gallery(data: ReportData, *, max_per_cell: int, max_total: int) -> list[dict[str, Any]]:
    """Per cell: confounder-reliant items first, then random ones, within both caps."""
    if not data.gallery:
        return []
    regions = list(data.gallery.get("regions") or [])
    legend = [
        {"name": r, "color": "rgb({},{},{})".format(*REGION_COLORS[i % len(REGION_COLORS)])}
        for i, r in enumerate(regions)
    ]
    by_cell: dict[str, list[dict[str, Any]]] = {}
    items = sorted(data.gallery["items"], key=lambda it: it.get("reason") != "confounder")
    total = 0
    for item in items:
        cell = str(item.get("cell", ""))
        bucket = by_cell.setdefault(cell, [])
        if len(bucket) >= max_per_cell or total >= max_total:
            continue
        bucket.append(_gallery_item(data, item))
        total += 1
    order = [str(c["cell"]) for c in data.cells]
    cells = sorted(by_cell, key=lambda c: order.index(c) if c in order else len(order))
    n_of = {str(c["cell"]): c for c in data.cells}
    return [
        {
            "cell": c,
            "n": n_of.get(c, {}).get("n"),
            "small": n_of.get(c, {}).get("small"),
            "legend": legend,
            "items": by_cell[c],
        }
        for c in cells
        if by_cell[c]
    ]


def _gallery_item(data: ReportData, item: dict[str, Any]) -> dict[str, Any]:
    key = item["key"]
    image = np.asarray(data.arrays[f"image/{key}"], dtype=np.uint8)
    masks = data.arrays.get(f"masks/{key}")
    # Outlines are drawn on the thumbnail so they stay visible after downscaling.
    thumb = np.asarray(thumbnail(image, max_side=THUMB_SIDE))
    if masks is not None and masks.size:
        small = np.stack(
            [
                np.asarray(
                    thumbnail(
                        np.repeat(m[..., None].astype(np.uint8) * 255, 3, axis=2),
                        max_side=THUMB_SIDE,
                    )
                )[..., 0]
                >= 128
                for m in masks
            ]
        )
        outlined = draw_outlines(thumb, small, width=2 if max(thumb.shape[:2]) >= 120 else 1)
    else:
        outlined = thumb
    panels = [{"title": "image + regions", "uri": data_uri(thumbnail(outlined))}]
    captions = []
    for model in data.models:
        info = (item.get("models") or {}).get(model)
        heat = data.arrays.get(f"map/{model}/{key}")
        if heat is not None:
            over = overlay_map(image, np.asarray(heat, dtype=np.float32))
            panels.append({"title": model, "uri": data_uri(thumbnail(over, max_side=THUMB_SIDE))})
        if info:
            mass = info.get("mass") or {}
            captions.append(
                {
                    "model": model,
                    "pred": str(info.get("pred", "")),
                    "prob": _fmt(info.get("prob")),
                    "mass": [(r, _fmt(mass.get(r))) for r in ROLES if r in mass],
                }
            )
    return {
        "id": str(item.get("id", key)),
        "label": str(item.get("label", "")),
        "reason": str(item.get("reason", "")),
        "panels": panels,
        "captions": captions,
    }


def _lowest_cells(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model, the worst group as the audit wrote it (``worst_group.parquet``, copied into
    ``summary.json``'s models): cell, n, value, ci_low, ci_high, overall."""
    out = []
    for m in summary.get("models") or []:
        w = m.get("worst_group") if isinstance(m, dict) else None
        if isinstance(w, dict):
            out.append({"model": str(m.get("name")), **w})
    return out


def build_context(
    data: ReportData, *, max_per_cell: int = 6, max_total: int = 60
) -> dict[str, Any]:
    """Everything the template needs, as plain values (strings escaped by the template)."""
    summary = dict(data.summary)
    d = summary.get("data") or {}
    figures: dict[str, list[FigureSpec]] = {
        "attention": attention_figures(data),
        "performance": performance_figures(data),
        "comparison": comparison_figures(data),
        "interventions": intervention_figures(data),
    }
    chart_data = {
        spec.id: script_json(plotly.io.to_json(spec.figure, validate=True))
        for specs in figures.values()
        for spec in specs
    }
    gaps = rate_gaps(data)
    rate_table = (
        Table(
            ["model", "attribute", "class", "TPR gap", "FPR gap", "TPR / FPR by value (n)"],
            [
                [
                    r.model,
                    r.attribute,
                    r[2],
                    _fmt(r.tpr_gap),
                    _fmt(r.fpr_gap),
                    "; ".join(f"{v} (n={n}): {_fmt(t)} / {_fmt(f)}" for v, n, t, f in r.rates),
                ]
                for r in gaps.itertuples(index=False)
            ],
        )
        if not gaps.empty
        else None
    )
    models = [dict(m) for m in summary.get("models") or []]
    n_skipped = d.get("skipped")
    if n_skipped is None and data.skipped is not None:
        n_skipped = len(data.skipped)
    return {
        "title": str(summary.get("title") or data.run_dir.name),
        "created": summary.get("created"),
        "data": d,
        "cells": data.cells,
        "n_skipped": n_skipped,
        "models": models,
        "model_names": data.models,
        "explain": summary.get("explain") or {},
        "stats": summary.get("stats") or {},
        "findings": _findings(summary, data.cells),
        "figures": figures,
        "chart_data": chart_data,
        "worst": [
            {
                **w,
                "value": _fmt(w["value"]),
                "ci": _ci(w["ci_low"], w["ci_high"]),
                "overall": _fmt(w["overall"]),
            }
            for w in _lowest_cells(summary)
        ],
        "rate_table": rate_table,
        "gaps_table": _table(data.gaps),
        "fairness_table": _table(data.fairness),
        "comparisons_table": _table(data.comparisons),
        "skipped_table": _table(data.skipped, max_rows=50),
        "gallery": _gallery(data, max_per_cell=max_per_cell, max_total=max_total),
        "methods": METHODS_TEXT,
        "config_text": data.config_text,
        "provenance": summary.get("provenance") or {},
        "timings": summary.get("timings") or {},
        "discovery": discovery_context(data.run_dir, summary),  # issue 16
        "fmt": _fmt,
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
        autoescape=jinja2.select_autoescape(["html", "j2", "html.j2"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _plotly_js() -> Markup:
    source = plotly.offline.get_plotlyjs()
    # plotly.js has no "</script" today; guard anyway, since it would end the inline block.
    source = source.replace("</script", "<\\/script").replace("<!--", "<\\!--")
    return Markup(source)  # noqa: S704 -- the library's own source, not user text


def render_report(
    run_dir: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    force: bool = True,
    max_per_cell: int = 6,
    max_total: int = 60,
) -> Path:
    """Write the self-contained HTML report of one audit run.

    Args:
        run_dir: the run folder written by ``audit`` (see docs/design.md).
        out: where to write; default ``run_dir/report.html``.
        force: overwrite an existing ``out``; with ``False`` an existing file is an error.
        max_per_cell: gallery samples shown per cell (confounder-reliant ones first).
        max_total: gallery samples shown in all.

    Returns:
        The path written. The file needs no network: plotly.js is inlined once and the
        pictures are data URIs.

    Raises:
        RunError: the run folder or a required file is missing, or ``out`` exists and
            ``force`` is False.
        DataError: a file of the run folder is malformed (its name is in the message).
        ConfigError: ``max_per_cell`` or ``max_total`` is below 0.
    """
    for name, value in (("max_per_cell", max_per_cell), ("max_total", max_total)):
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    data = load_run(run_dir)
    target = Path(out) if out is not None else data.run_dir / "report.html"
    if target.exists() and not force:
        raise RunError(f"{target}: exists; pass force=True to overwrite it")
    context = build_context(data, max_per_cell=max_per_cell, max_total=max_total)
    context["plotly_js"] = _plotly_js()
    html = _environment().get_template("report.html.j2").render(**context)
    write_text(target, html)
    return target
