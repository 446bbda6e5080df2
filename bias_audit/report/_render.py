"""Assemble the report: load the run folder, build figures and pictures, render the template."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

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
    method_figures,
    performance_figures,
    rate_gaps,
)
from bias_audit.report._images import REGION_COLORS, data_uri, draw_outlines, overlay_map, thumbnail
from bias_audit.report._load import ReportData, load_run
from bias_audit.report._redact import PathPolicy
from bias_audit.report._tables import Table, ci_text, fmt, frame_table
from bias_audit.report._trust import trust_context, trust_figures

__all__ = [
    "render_report",
    "build_context",
    "script_json",
    "SEVERITIES",
    "METHODS_TEXT",
    "READING_TEXT",
    "SEVERITY_TEXT",
    "lower_is_better",
]

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


#: How to read each chart, shown in the Methods section.
READING_TEXT: tuple[tuple[str, str], ...] = (
    (
        "Verdict cards",
        "One card per model: pass, concern or fail against the gate's criteria. Each criterion "
        "shows the model's value, the limit, the 95% interval and n. A criterion fails when the "
        "value is beyond the limit and the whole interval is too; it is a concern when the value "
        "is beyond the limit but the interval reaches back across it; no data counts as a fail.",
    ),
    (
        "Scoreboard",
        "The models side by side on the numbers the verdicts rest on, each with its 95% interval.",
    ),
    (
        "Attention mass by role",
        "One panel per role; bars are cell means of the share of the map inside the role, error "
        "bars 95% bootstrap intervals. Confounder mass high in some cells only is a group bias; "
        "high everywhere is a shortcut.",
    ),
    (
        "Lift by role",
        "Mass divided by area; the dashed line at 1 is what a map that ignores the image gets. "
        "Above 1 the model looks at the role more than its size explains.",
    ),
    (
        "Per-method panels",
        "The same statistic for every explanation method listed: a finding that holds under one "
        "method only is weaker evidence than one that holds under all.",
    ),
    (
        "Accuracy per cell",
        "Bars with Wilson 95% intervals; compare the worst cell with the others.",
    ),
    (
        "Paired differences",
        "One point per metric and cell: model B minus model A on the same images, with a paired "
        "interval. An interval that does not cross 0 is a change.",
    ),
    (
        "Occlusion",
        "Bars: the flip rate (or score drop) when a role's pixels are filled; diamonds over each "
        "bar: the same for a random patch of the same area. A bar far above its diamond means "
        "the model relies on that role.",
    ),
    (
        "Galleries",
        "The image with region outlines, then each model's map for each method over it.",
    ),
)

#: What a finding's severity means (the rules that assign it are in the findings table of
#: the README); the report shows the severity the audit wrote.
SEVERITY_TEXT: tuple[tuple[str, str], ...] = (
    (
        "high",
        "A risk large enough to fail a review on its own, with an interval clear of the threshold.",
    ),
    (
        "medium",
        "A risk beyond its threshold whose interval still reaches back across it, or a "
        "smaller risk with strong evidence; look before signing.",
    ),
    ("low", "A measurable effect below the thresholds that matter; worth knowing."),
    ("info", "Not a risk of the model: a class effect, a note on the data or the method."),
)


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


_fmt, _ci = fmt, ci_text


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
                "kind": "info" if f.get("kind") == "info" else "risk",
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


def _gallery(
    data: ReportData, *, max_per_cell: int, max_total: int, policy: PathPolicy
) -> list[dict[str, Any]]:
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
        bucket.append(_gallery_item(data, item, policy))
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
            "methods": _gallery_methods(data),
            "items": by_cell[c],
        }
        for c in cells
        if by_cell[c]
    ]


def _gallery_item(data: ReportData, item: dict[str, Any], policy: PathPolicy) -> dict[str, Any]:
    """The image with outlines, then per model one map per method (``map/<model>/<key>`` for
    the first method, ``map/<model>/<key>@<method>`` for the others)."""
    key = item["key"]
    methods = _gallery_methods(data) or [""]
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
        for i, method in enumerate(methods):
            heat = data.arrays.get(f"map/{model}/{key}" + (f"@{method}" if i else ""))
            if heat is None:
                continue
            over = overlay_map(image, np.asarray(heat, dtype=np.float32))
            title = f"{model} \u00b7 {method}" if len(methods) > 1 else model
            panels.append({"title": title, "uri": data_uri(thumbnail(over, max_side=THUMB_SIDE))})
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
    for p in panels:
        p["title"] = policy.text(p["title"])
    return {
        "id": policy.text(str(item.get("id", key))),
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


_STATUSES = ("pass", "concern", "fail", "no_data")
#: Rows of the scoreboard: key in the contract's ``scoreboard`` entries, label.
SCOREBOARD_ROWS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Accuracy"),
    ("worst_group_accuracy", "Worst-group accuracy"),
    ("confounder_mass", "Attention on confounders"),
    ("confounder_lift", "Confounder lift"),
    ("flip_rate", "Flip rate, confounders occluded"),
    ("flip_rate_random", "Flip rate, random patches"),
    ("flip_excess", "Flip excess (confounders \u2212 random)"),
)


def lower_is_better(metric: str, confounder_regions: list[str] | tuple[str, ...] = ()) -> bool:
    """Whether a smaller value of ``metric`` is the better one (so the worst cell has the
    largest value): attention on confounders or background, and flips or drops when anything
    but the causal regions is occluded."""
    base, _, rest = metric.partition(":")
    name = rest.partition("@")[0]
    if base in ("flip", "drop", "flip_random", "drop_random"):
        return name != "causal"
    if base in ("mass", "lift", "rank", "pointing", "loc_iou"):
        return name in ("confounder", "background", *confounder_regions)
    return False


def _verdicts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for v in summary.get("verdicts") or []:
        if not isinstance(v, dict):
            continue
        status = str(v.get("status") or "no_data")
        criteria = []
        for c in v.get("criteria") or []:
            cs = str(c.get("status") or "no_data")
            criteria.append(
                {
                    "label": str(c.get("label") or c.get("name") or ""),
                    "name": str(c.get("name") or ""),
                    "value": _fmt(c.get("value")),
                    "limit": _fmt(c.get("limit")),
                    "ci": _ci(c.get("ci_low"), c.get("ci_high")),
                    "n": _fmt(c.get("n")),
                    "status": cs if cs in _STATUSES else "no_data",
                }
            )
        top = v.get("top_finding")
        out.append(
            {
                "model": str(v.get("model") or ""),
                "status": status if status in _STATUSES else "no_data",
                "headline": str(v.get("headline") or ""),
                "criteria": criteria,
                "top_finding": top if isinstance(top, dict) else None,
                "caveats": [c for c in v.get("caveats") or [] if isinstance(c, dict)],
            }
        )
    return out


def _score_cell(entry: Any) -> tuple[str, Any]:
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "\u2013", None
    ci = _ci(entry.get("ci_low"), entry.get("ci_high"))
    cell = f" in {entry['cell']}" if entry.get("cell") else ""
    n = f" (n = {entry['n']})" if entry.get("n") is not None else ""
    return f"{_fmt(entry['value'])} {ci}{cell}{n}".replace("  ", " "), entry.get("value")


def _scoreboard(summary: dict[str, Any]) -> Table | None:
    """Models side by side: one column per model, one row per scoreboard metric."""
    board = [b for b in summary.get("scoreboard") or [] if isinstance(b, dict)]
    if not board:
        return None
    names = [str(b.get("model")) for b in board]
    shown, raw = [], []
    for key, text in SCOREBOARD_ROWS:
        cells = [_score_cell(b.get(key)) for b in board]
        shown.append([text, *(c[0] for c in cells)])
        raw.append([key, *(c[1] for c in cells)])
    tops = [b.get("top_finding") for b in board]
    shown.append(["Top finding", *(str(t) if t else "none" for t in tops)])
    raw.append(["top_finding", *tops])
    return Table.of("scoreboard", ["", *names], raw, shown=shown)


def _changes(summary: dict[str, Any]) -> Table | None:
    rows = [c for c in summary.get("changes") or [] if isinstance(c, dict)]
    if not rows:
        return None
    keys = ["model_a", "model_b", "metric", "cell", "diff", "ci_low", "ci_high", "p_value",
            "direction", "text"]  # fmt: skip
    shown = [
        [
            str(c.get("text") or ""),
            str(c.get("direction") or ""),
            f"{float(c['diff']):+.3f}" if c.get("diff") is not None else "\u2013",
            _ci(c.get("ci_low"), c.get("ci_high")),
            _fmt(c.get("p_value")),
        ]
        for c in rows
    ]
    classes = [
        f"dir-{c.get('direction')}" if c.get("direction") in ("better", "worse", "same") else ""
        for c in rows
    ]
    table = Table.of(
        "changes",
        ["change", "direction", "difference", "95% CI", "p"],
        [[c.get(k) for k in keys] for c in rows],
        shown=shown,
        classes=classes,
    )
    return Table(**{**table.__dict__, "csv_columns": keys})


def _gaps(frame: pd.DataFrame | None, regions: list[str]) -> Table | None:
    """gaps.parquet with the worse and better cells named by each metric's direction: for
    accuracy the worse cell has the lowest mean, for confounder mass the highest."""
    if frame is None:
        return None
    if not {"worst_cell", "best_cell", "worst_value", "best_value"} <= set(frame.columns):
        return frame_table("gaps", frame)
    out = frame.copy()
    flip = out["metric"].astype(str).map(lambda m: lower_is_better(m, regions)).to_numpy(bool)
    for a, b in (("worst_cell", "best_cell"), ("worst_value", "best_value")):
        lo, hi = out[a].copy(), out[b].copy()
        out.loc[flip, a], out.loc[flip, b] = hi[flip], lo[flip]
    out = out.rename(
        columns={"worst_cell": "worse_cell", "worst_value": "worse_value",
                 "best_cell": "better_cell", "best_value": "better_value"}
    )  # fmt: skip
    at = out.columns.get_loc("metric")
    assert isinstance(at, int)  # the column is unique, so its location is one int
    out.insert(at + 1, "lower_is_better", flip)
    return frame_table("gaps", out)


def _rates(cell: object) -> list[tuple[str, int, float, float]]:
    # rate_gaps' ``rates`` column holds one such list per row; pandas types a cell as a scalar.
    return cast("list[tuple[str, int, float, float]]", cell)


def _gallery_methods(data: ReportData) -> list[str]:
    methods = list(data.summary.get("methods") or (data.summary.get("explain") or {}).get(
        "methods") or [])  # fmt: skip
    return [str(m) for m in methods]


def build_context(
    data: ReportData, *, max_per_cell: int = 6, max_total: int = 60, redact: bool = False
) -> dict[str, Any]:
    """Everything the template needs, as plain values (strings escaped by the template).

    With ``redact`` no path and no config comment reaches the context; otherwise paths are
    relative to the config's folder when it can be told.
    """
    policy = PathPolicy.of(data.summary, data.config_text, data.run_dir, redact=redact)
    summary = policy.obj(dict(data.summary))
    d = dict(summary.get("data") or {})
    d["manifest"] = policy.path((data.summary.get("data") or {}).get("manifest"))
    models = [dict(m) for m in summary.get("models") or []]
    for m, raw in zip(models, data.summary.get("models") or [], strict=False):
        m["checkpoint"] = policy.path(raw.get("checkpoint"))
    figures: dict[str, list[FigureSpec]] = {
        "attention": attention_figures(data),
        "methods": method_figures(data),
        "performance": performance_figures(data),
        "comparison": comparison_figures(data),
        "interventions": intervention_figures(data),
        "trust": trust_figures(summary),
    }
    chart_data = {
        spec.id: script_json(plotly.io.to_json(policy.obj(spec.figure), validate=True))
        for specs in figures.values()
        for spec in specs
    }
    gaps = rate_gaps(data)
    rate_table = (
        Table.of(
            "rates",
            ["model", "group attribute", "class", "TPR gap", "FPR gap", "TPR / FPR by value (n)"],
            [
                [
                    r.model,
                    r.attribute,
                    r[2],
                    r.tpr_gap,
                    r.fpr_gap,
                    "; ".join(f"{v} (n={n}): {t} / {f}" for v, n, t, f in _rates(r.rates)),
                ]
                for r in gaps.itertuples(index=False)
            ],  # fmt: skip
            shown=[
                [
                    str(r.model),
                    str(r.attribute),
                    r[2],
                    _fmt(r.tpr_gap),
                    _fmt(r.fpr_gap),
                    "; ".join(
                        f"{v} (n={n}): {_fmt(t)} / {_fmt(f)}" for v, n, t, f in _rates(r.rates)
                    ),
                ]
                for r in gaps.itertuples(index=False)
            ],
        )
        if not gaps.empty
        else None
    )
    n_skipped = d.get("skipped")
    if n_skipped is None and data.skipped is not None:
        n_skipped = len(data.skipped)
    worst = _lowest_cells(summary)
    worst_table = (
        Table.of(
            "worst_group",
            ["model", "worst cell", "n", "accuracy", "95% Wilson CI", "overall accuracy"],
            [
                [w["model"], w["cell"], w["n"], w["value"], w["ci_low"], w["ci_high"], w["overall"]]
                for w in worst
            ],  # fmt: skip
            shown=[
                [
                    str(w["model"]),
                    str(w["cell"]),
                    _fmt(w["n"]),
                    _fmt(w["value"]),
                    _ci(w["ci_low"], w["ci_high"]),
                    _fmt(w["overall"]),
                ]
                for w in worst
            ],  # fmt: skip
        )
        if worst
        else None
    )
    cells_table = Table.of(
        "cells",
        ["cell", "n", "small"],
        [[c.get("cell"), c.get("n"), bool(c.get("small"))] for c in data.cells],
        shown=[
            [
                str(c.get("cell")),
                _fmt(c.get("n")),
                "\u2020 below min_group_size" if c.get("small") else "",
            ]
            for c in data.cells
        ],  # fmt: skip
    )
    model_cols = ["name", "arch", "target_layer", "layer_shape", "checkpoint", "sha256",
                  "nan_maps"]  # fmt: skip
    models_table = Table.of(
        "models",
        [
            "name",
            "architecture",
            "target layer",
            "layer resolution",
            "checkpoint",
            "sha256",
            "all-zero maps",
        ],  # fmt: skip
        [
            [
                m.get(k) if k != "layer_shape" else " x ".join(map(str, m.get(k) or []))
                for k in model_cols
            ]
            for m in models
        ],  # fmt: skip
        shown=[
            [
                str(m.get("name")),
                str(m.get("arch") or ""),
                str(m.get("target_layer") or ""),
                " \u00d7 ".join(map(str, m.get("layer_shape") or [])),
                str(m.get("checkpoint") or "\u2013"),
                str(m.get("sha256") or "\u2013"),
                _fmt(m.get("nan_maps")),
            ]
            for m in models
        ],  # fmt: skip
    )
    findings = _findings(summary, data.cells)
    regions = [str(r) for r in (d.get("roles") or {}).get("confounder") or []]
    return {
        "title": str(summary.get("title") or data.run_dir.name),
        "created": summary.get("created"),
        "data": d,
        "cells": data.cells,
        "cells_table": cells_table,
        "models_table": models_table,
        "n_skipped": n_skipped,
        "models": models,
        "model_names": data.models,
        "explain": summary.get("explain") or {},
        "method_names": _gallery_methods(data),
        "stats": summary.get("stats") or {},
        "verdicts": _verdicts(summary),
        "scoreboard": _scoreboard(summary),
        "changes_table": _changes(summary),
        "warnings": [w for w in summary.get("warnings") or [] if isinstance(w, dict)],
        "risks": [f for f in findings if f["kind"] == "risk"],
        "infos": [f for f in findings if f["kind"] == "info"],
        "findings": findings,
        "figures": figures,
        "chart_data": chart_data,
        "worst_table": worst_table,
        "rate_table": rate_table,
        "gaps_table": _gaps(policy.frame(data.gaps), regions),
        "fairness_table": frame_table("fairness", policy.frame(data.fairness)),
        "comparisons_table": frame_table("comparisons", policy.frame(data.comparisons)),
        "skipped_table": frame_table("skipped", policy.frame(data.skipped), max_rows=50),
        "gallery": _gallery(data, max_per_cell=max_per_cell, max_total=max_total, policy=policy),
        "methods": METHODS_TEXT,
        "reading": READING_TEXT,
        "severity_text": SEVERITY_TEXT,
        "redacted": redact,
        "config_text": policy.config(data.config_text),
        "provenance": summary.get("provenance") or {},
        "timings": summary.get("timings") or {},
        "discovery": discovery_context(data.run_dir, summary),
        "fmt": _fmt,
        "trust": trust_context(summary),
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
    redact: bool = False,
) -> Path:
    """Write the self-contained HTML report of one audit run.

    Args:
        run_dir: the run folder written by ``audit`` (see docs/design.md).
        out: where to write; default ``run_dir/report.html``.
        force: overwrite an existing ``out``; with ``False`` an existing file is an error.
        max_per_cell: gallery samples shown per cell (confounder-reliant ones first).
        max_total: gallery samples shown in all.
        redact: drop every path (manifest, checkpoints, files named in tables and texts) and
            the config's comments, for a report that leaves the organisation. Without it,
            paths are shown relative to the config's folder.

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
    context = build_context(data, max_per_cell=max_per_cell, max_total=max_total, redact=redact)
    context["plotly_js"] = _plotly_js()
    html = _environment().get_template("report.html.j2").render(**context)
    write_text(target, html)
    return target
