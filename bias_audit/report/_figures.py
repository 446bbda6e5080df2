"""Plotly figures of the report, built from aggregates so the file size does not grow with n.

Every number drawn is read from the run folder's tables (``groups``, ``rates``,
``distributions``, ``comparisons``); nothing here computes a statistic.

Every user string that reaches a figure goes through :func:`plot_text`: plotly renders a small
HTML subset in labels, and escaping makes a group value such as ``<b>`` show as typed.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bias_audit.core._naming import ROLES, column
from bias_audit.errors import DataError
from bias_audit.report._load import ReportData

__all__ = [
    "FigureSpec",
    "plot_text",
    "metric_frame",
    "attention_figures",
    "performance_figures",
    "rate_gaps",
    "comparison_figures",
    "intervention_figures",
    "method_figures",
    "methods_of",
]

#: Plotly's qualitative palette without red/green as the only contrast.
MODEL_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
SMALL_MARK = " \u2020"
LEGEND_TOP = {"orientation": "h", "y": 1.02, "yanchor": "bottom"}
TILTED = {"tickangle": -30, "automargin": True}


@dataclass(frozen=True)
class FigureSpec:
    """One chart: ``figure`` is a plotly figure dict (data + layout); ``note`` a plain caption."""

    id: str
    title: str
    note: str
    figure: dict[str, Any]


def plot_text(value: object) -> str:
    """Escape a user string for plotly's pseudo-HTML labels (it decodes &lt; back to <)."""
    return html.escape(str(value), quote=False)


def _cell_row(part: pd.DataFrame, cell: str, table: str) -> pd.Series[Any]:
    """The one row of ``cell`` in a per-model table indexed by cell."""
    row = part.loc[cell]
    if isinstance(row, pd.DataFrame):
        raise DataError(f"{table}: cell {cell!r} has {len(row)} rows for one model, expected 1")
    return row


def _clean(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _cell_info(data: ReportData) -> list[tuple[str, int, bool]]:
    return [(str(c["cell"]), int(c.get("n", 0)), bool(c.get("small", False))) for c in data.cells]


def metric_frame(data: ReportData, metric: str) -> pd.DataFrame:
    """Per model x cell: value, ci_low, ci_high, n, small for ``metric``, from ``groups.parquet``.

    Empty when the table has no rows of the metric. Small cells never get a CI.
    """
    cols = ["model", "cell", "n", "small", "value", "ci_low", "ci_high"]
    g = data.groups
    rows = g[(g["metric"] == metric) & (g["cell"] != "all")] if not g.empty else g
    if rows.empty:
        return pd.DataFrame(columns=cols)
    out = rows[cols].copy()
    out["model"] = out["model"].astype(str)
    out["cell"] = out["cell"].astype(str)
    out.loc[out["small"].astype(bool), ["ci_low", "ci_high"]] = np.nan
    return out.reset_index(drop=True)


def _cell_label(cell: str, n: int, small: bool) -> str:
    return plot_text(f"{cell} (n={n})") + (SMALL_MARK if small else "")


def _bar_trace(
    frame: pd.DataFrame,
    model: str,
    cells: Sequence[tuple[str, int, bool]],
    *,
    color: str,
    xaxis: str = "x",
    yaxis: str = "y",
    showlegend: bool = True,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """Bars of one model over the cells: one trace with CIs, one hatched trace for small cells.

    Small cells get their own trace (sharing the model's slot via ``offsetgroup``) because
    plotly draws a zero-length error bar for a null, which would read as a certain value.
    """
    part = frame[frame["model"] == model].set_index("cell")
    name = name or plot_text(model)
    groups: dict[bool, dict[str, list[Any]]] = {
        flag: {"x": [], "y": [], "plus": [], "minus": [], "hover": []} for flag in (False, True)
    }
    for cell, n, small in cells:
        if cell not in part.index:
            continue
        row = _cell_row(part, cell, "groups.parquet")
        v, lo, hi = _clean(row["value"]), _clean(row["ci_low"]), _clean(row["ci_high"])
        if not small and v is not None and lo is not None and hi is not None:
            plus, minus, ci = hi - v, v - lo, f"[{lo:.3f}, {hi:.3f}]"
        else:
            plus, minus, ci = 0.0, 0.0, ("no CI: small cell" if small else "no CI")
        g = groups[small]
        g["x"].append(_cell_label(cell, n, small))
        g["y"].append(v)
        g["plus"].append(plus)
        g["minus"].append(minus)
        g["hover"].append(f"{_fmt(v)} {ci}, n={int(row['n'])}")
    traces = []
    for small, g in groups.items():
        if not g["x"]:
            continue
        trace: dict[str, Any] = {
            "type": "bar",
            "name": name + (" (small cells)" if small else ""),
            "legendgroup": name,
            "offsetgroup": name,
            "showlegend": showlegend and not small,
            "x": g["x"],
            "y": g["y"],
            "marker": {"color": color},
            "customdata": g["hover"],
            "hovertemplate": "%{x}<br>%{customdata}<extra>%{fullData.name}</extra>",
            "xaxis": xaxis,
            "yaxis": yaxis,
        }
        if small:
            trace["marker"] = {"color": color, "opacity": 0.55, "pattern": {"shape": "/"}}
        elif any(g["plus"]) or any(g["minus"]):
            trace["error_y"] = {
                "type": "data",
                "array": g["plus"],
                "arrayminus": g["minus"],
                "visible": True,
            }
        traces.append(trace)
    return traces


def _fmt(v: float | None) -> str:
    return "\u2013" if v is None else f"{v:.3f}"


def _axis_names(i: int) -> tuple[str, str]:
    return ("x", "y") if i == 0 else (f"x{i + 1}", f"y{i + 1}")


def _panels(
    data: ReportData,
    metric: str,
    *,
    yrange: Sequence[float] | None,
    baseline: str | None = None,
    names: Sequence[str] = ROLES,
    reference: float | None = None,
) -> dict[str, Any] | None:
    """One subplot per role (or region of ``names``), bars per model by cell; ``baseline``
    adds diamond markers over each model's bar; ``reference`` a dashed line on every panel."""
    panels = [
        (role, column(metric, role), column(baseline, role) if baseline else None) for role in names
    ]
    return _panel_figure(data, panels, ytitle=metric, yrange=yrange, reference=reference)


def _panel_figure(
    data: ReportData,
    panels: Sequence[tuple[str, str, str | None]],
    *,
    ytitle: str,
    yrange: Sequence[float] | None,
    reference: float | None = None,
) -> dict[str, Any] | None:
    """Subplots side by side, one per ``(title, metric column, baseline column or None)``."""
    cells = _cell_info(data)
    frames = {col: metric_frame(data, col) for _, col, _ in panels}
    if all(f.empty for f in frames.values()):
        return None
    traces: list[dict[str, Any]] = []
    # scattermode "group" puts each baseline marker over the bar of its own offsetgroup (its
    # model), not over the middle of the cell's group of bars.
    layout: dict[str, Any] = {"barmode": "group", "scattermode": "group", "shapes": []}
    n_panels = len(panels)
    gap = 0.06
    width = (1 - gap * (n_panels - 1)) / n_panels
    for i, (title, col, base_col) in enumerate(panels):
        xa, ya = _axis_names(i)
        start = i * (width + gap)
        layout[f"xaxis{i + 1 if i else ''}"] = {
            "domain": [start, start + width],
            "anchor": ya,
            "title": {"text": plot_text(title)},
            "tickangle": -30,
            "automargin": True,
        }
        layout[f"yaxis{i + 1 if i else ''}"] = {
            "anchor": xa,
            **({"range": list(yrange)} if yrange else {}),
            **({"matches": "y"} if i else {"title": {"text": plot_text(ytitle)}}),
        }
        if reference is not None:
            layout["shapes"].append(
                {
                    "type": "line",
                    "xref": f"{xa} domain",
                    "yref": ya,
                    "x0": 0,
                    "x1": 1,
                    "y0": reference,
                    "y1": reference,
                    "line": {"color": "#57606a", "width": 1.5, "dash": "dash"},
                }
            )
        base = metric_frame(data, base_col) if base_col else None
        for j, model in enumerate(data.models):
            color = MODEL_COLORS[j % len(MODEL_COLORS)]
            traces.extend(
                _bar_trace(
                    frames[col], model, cells, color=color, xaxis=xa, yaxis=ya, showlegend=i == 0
                )
            )
            if base is None or base.empty:
                continue
            for trace in _bar_trace(
                base,
                model,
                cells,
                color=color,
                xaxis=xa,
                yaxis=ya,
                showlegend=i == 0,
                name=plot_text(model) + " \u00b7 random patch",
            ):
                trace.update(
                    type="scatter",
                    mode="markers",
                    # the model's own slot: the same offsetgroup as its bars
                    offsetgroup=plot_text(model),
                    marker={
                        "color": "#1b1f24",
                        "symbol": "diamond-open",
                        "size": 10,
                        "line": {"width": 2},
                    },
                )
                if "error_y" in trace:
                    trace["error_y"]["color"] = "#1b1f24"
                traces.append(trace)
    layout["legend"] = {"orientation": "h", "y": 1.12, "yanchor": "bottom"}
    layout["margin"] = {"t": 90, "b": 40}
    layout["height"] = 460
    return {"data": traces, "layout": layout}


def _box_figure(data: ReportData, metric: str) -> dict[str, Any] | None:
    """Box plots from the per-cell quantiles of ``distributions.parquet`` (Tukey fences), so
    size is O(cells), not O(images)."""
    table = data.distributions
    if table is None or table.empty:
        return None
    table = table[table["metric"] == metric]
    traces = []
    for j, model in enumerate(data.models):
        part = table[table["model"].astype(str) == model].set_index("cell")
        stats: dict[str, list[Any]] = {
            k: [] for k in ("x", "q1", "median", "q3", "lowerfence", "upperfence", "mean")
        }
        for cell, n, small in _cell_info(data):
            if cell not in part.index:
                continue
            r = _cell_row(part, cell, "distributions.parquet")
            stats["x"].append(_cell_label(cell, n, small))
            for key, col in (("q1", "q1"), ("median", "median"), ("q3", "q3"),
                             ("lowerfence", "lower_fence"), ("upperfence", "upper_fence"),
                             ("mean", "mean")):  # fmt: skip
                stats[key].append(float(r[col]))
        if stats["x"]:
            traces.append(
                {
                    "type": "box",
                    "name": plot_text(model),
                    **stats,
                    "marker": {"color": MODEL_COLORS[j % len(MODEL_COLORS)]},
                    "boxmean": True,
                }
            )
    if not traces:
        return None
    return {
        "data": traces,
        "layout": {
            "boxmode": "group",
            "height": 400,
            "yaxis": {"title": {"text": metric}, "range": [0, 1]},
            "xaxis": TILTED,
            "legend": LEGEND_TOP,
        },
    }


def attention_figures(data: ReportData) -> list[FigureSpec]:
    """Mass by role (with CIs), lift by role, and the distribution of confounder mass."""
    out = []
    mass = _panels(data, "mass", yrange=(0, 1))
    if mass:
        out.append(
            FigureSpec(
                "fig-mass",
                "Attention mass by role",
                "Share of each map's mass inside the role's regions; bars are "
                "means per cell, error bars 95% bootstrap CIs (none for small "
                "cells, marked \u2020).",
                mass,
            )
        )
    lift = _panels(data, "lift", yrange=None, reference=1.0)
    if lift:
        out.append(
            FigureSpec(
                "fig-lift",
                "Lift by role",
                "Mass divided by the role's area, error bars 95% bootstrap CIs; the dashed "
                "line at 1 is what a uniform map gets, above it attention concentrates on "
                "the role.",
                lift,
            )
        )
    box = _box_figure(data, column("mass", "confounder"))
    if box:
        out.append(
            FigureSpec(
                "fig-confounder-box",
                "Distribution of confounder mass",
                "Per cell: quartiles, Tukey whiskers and mean (dashed) over the "
                "images; computed from all images, drawn from their quantiles.",
                box,
            )
        )
    return out


def methods_of(data: ReportData) -> list[str]:
    """The explanation methods of the run, first (plain column names) first."""
    methods = data.summary.get("methods") or (data.summary.get("explain") or {}).get("methods")
    return [str(m) for m in methods or []]


def method_figures(data: ReportData) -> list[FigureSpec]:
    """Small multiples: for each role, one panel per explanation method (``@method`` columns
    of groups.parquet for every method after the first)."""
    methods = methods_of(data)
    if len(methods) < 2:
        return []
    out = []
    for metric, role, yrange, ref in (
        ("mass", "confounder", (0, 1), None),
        ("mass", "causal", (0, 1), None),
        ("lift", "confounder", None, 1.0),
    ):
        panels = [
            (m, column(metric, role) + (f"@{m}" if i else ""), None) for i, m in enumerate(methods)
        ]
        fig = _panel_figure(
            data, panels, ytitle=f"{metric} \u00b7 {role}", yrange=yrange, reference=ref
        )
        if fig:
            out.append(
                FigureSpec(
                    f"fig-methods-{metric}-{role}",
                    f"{'Attention mass' if metric == 'mass' else 'Lift'} on the {role} role, "
                    "by explanation method",
                    "One panel per method listed in the config, same cells and models; error "
                    "bars 95% bootstrap CIs" + ("; dashed line: lift 1." if ref else "."),
                    fig,
                )
            )
    return out


def rate_gaps(data: ReportData) -> pd.DataFrame:
    """TPR and FPR gaps per model x attribute x class, from ``rates.parquet``.

    Returns:
        One row per model x attribute x class: columns model, attribute, class, tpr_gap,
        fpr_gap, and ``rates``: a list of (value, n, tpr, fpr). Empty without the table.
    """
    cols = ["model", "attribute", "class", "tpr_gap", "fpr_gap", "rates"]
    table = data.rates
    if table is None or table.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    keys = ["model", "attribute", "class"]
    for (model, attr, cls), part in table.groupby(keys, sort=False):
        first = part.iloc[0]
        rows.append(
            {
                "model": str(model), "attribute": str(attr), "class": str(cls),
                "tpr_gap": float(first["tpr_gap"]), "fpr_gap": float(first["fpr_gap"]),
                "rates": [(str(r["value"]), int(r["n"]), float(r["tpr"]), float(r["fpr"]))
                          for r in part.to_dict(orient="records")],
            }
        )  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def performance_figures(data: ReportData) -> list[FigureSpec]:
    """Accuracy per cell with Wilson CIs, and TPR/FPR gaps per attribute and class."""
    out = []
    acc = metric_frame(data, "accuracy")
    cells = _cell_info(data)
    if not acc.empty:
        traces = [
            t
            for j, m in enumerate(data.models)
            for t in _bar_trace(acc, m, cells, color=MODEL_COLORS[j % len(MODEL_COLORS)])
        ]
        out.append(
            FigureSpec(
                "fig-accuracy",
                "Accuracy per cell",
                "Bars: accuracy; error bars: Wilson 95% intervals (none for small "
                "cells, marked \u2020).",
                {
                    "data": traces,
                    "layout": {
                        "barmode": "group",
                        "height": 400,
                        "yaxis": {"range": [0, 1], "title": {"text": "accuracy"}},
                        "xaxis": TILTED,
                        "legend": LEGEND_TOP,
                    },
                },
            )
        )
    gaps = rate_gaps(data)
    if not gaps.empty:
        traces = []
        for j, model in enumerate(data.models):
            part = gaps[gaps["model"] == model]
            xs, ys = [], []
            for r in part.itertuples(index=False):
                for kind, v in (("TPR", r.tpr_gap), ("FPR", r.fpr_gap)):
                    xs.append(plot_text(f"{kind} gap \u00b7 {r.attribute} \u00b7 {r[2]}"))
                    ys.append(_clean(v))
            traces.append(
                {
                    "type": "bar",
                    "name": plot_text(model),
                    "x": xs,
                    "y": ys,
                    "marker": {"color": MODEL_COLORS[j % len(MODEL_COLORS)]},
                }
            )
        out.append(
            FigureSpec(
                "fig-rate-gaps",
                "TPR and FPR gaps",
                "For each class, the largest difference in true- and "
                "false-positive rate between the values of a group attribute.",
                {
                    "data": traces,
                    "layout": {
                        "barmode": "group",
                        "height": 380,
                        "yaxis": {"title": {"text": "gap"}},
                        "legend": LEGEND_TOP,
                    },
                },
            )
        )
    return out


_DIFF_COLUMNS = ("diff", "difference", "mean_diff", "estimate", "value")


def comparison_columns(frame: pd.DataFrame) -> dict[str, str] | None:
    """Which columns of comparisons.parquet hold the difference, its CI and the labels."""
    value = next((c for c in _DIFF_COLUMNS if c in frame), None)
    if value is None or "ci_low" not in frame or "ci_high" not in frame:
        return None
    return {"value": value}


#: Rows per forest plot: at 26 px a row, one plot fits a printed page with its x-axis.
FOREST_ROWS = 24


def comparison_figures(data: ReportData) -> list[FigureSpec]:
    """Forest plots of the paired model differences in ``comparisons.parquet``: one per metric
    (split further past :data:`FOREST_ROWS` rows), so each fits a printed page with its axis."""
    frame = data.comparisons
    if frame is None or frame.empty:
        return []
    cols = comparison_columns(frame)
    if cols is None:
        return []
    metrics = frame["metric"].astype(str) if "metric" in frame else pd.Series([""] * len(frame))
    out = []
    for metric in pd.unique(metrics):
        part = frame[metrics.to_numpy() == metric]
        for k, first in enumerate(range(0, len(part), FOREST_ROWS)):
            chunk = part.iloc[first : first + FOREST_ROWS]
            suffix = f"-{k + 1}" if len(part) > FOREST_ROWS else ""
            fid = (
                "fig-comparison-"
                + "".join(ch if ch.isalnum() else "-" for ch in str(metric)).strip("-")
                + suffix
            )
            out.append(_forest(chunk, cols["value"], fid, str(metric)))
    return out


def _forest(frame: pd.DataFrame, value: str, fid: str, metric: str) -> FigureSpec:
    labels = []
    for r in frame.to_dict("records"):
        pair = " \u2212 ".join(str(r[c]) for c in ("model_a", "model_b") if c in r)
        cell = r.get("cell")
        cell = "all cells" if cell is None or pd.isna(cell) else str(cell)
        labels.append(plot_text(" \u00b7 ".join(p for p in (pair, cell) if p)))
    v = frame[value].astype(float)
    lo, hi = frame["ci_low"].astype(float), frame["ci_high"].astype(float)
    plus = [None if math.isnan(a) else float(a) for a in (hi - v)]
    minus = [None if math.isnan(a) else float(a) for a in (v - lo)]
    trace = {
        "type": "scatter",
        "mode": "markers",
        "x": [_clean(a) for a in v],
        "y": labels,
        "marker": {"color": MODEL_COLORS[0], "size": 8},
        "error_x": {"type": "data", "array": plus, "arrayminus": minus},
    }
    layout = {
        "height": max(260, 26 * len(labels) + 120),
        "margin": {"l": 300},
        "showlegend": False,
        "xaxis": {"title": {"text": f"paired difference \u00b7 {plot_text(metric)}"},
                  "zeroline": True},
        "yaxis": {"autorange": "reversed", "automargin": True},
    }  # fmt: skip
    return FigureSpec(
        fid,
        f"Paired differences between models: {metric}",
        "Mean paired difference over the same images, with its paired bootstrap 95% CI; "
        "0 means no difference.",
        {"data": [trace], "layout": layout},
    )


def _occluded_regions(data: ReportData) -> list[str]:
    """Regions occluded on their own (``[interventions] regions``), in the tables' order."""
    names = data.groups["metric"].unique() if not data.groups.empty else data.samples.columns
    out: list[str] = []
    for name in names:
        metric, sep, region = str(name).partition(":")
        if sep and metric == "flip" and region not in ROLES and region not in out:
            out.append(region)
    return out


def intervention_figures(data: ReportData) -> list[FigureSpec]:
    """Flip rate and score drop when each role (and each region occluded on its own) is
    occluded, against a random patch."""
    names = (*ROLES, *_occluded_regions(data))
    out = []
    for metric, title, note in (
        (
            "flip",
            "Flip rate when a role is occluded",
            "Share of predictions that change when the role's pixels are filled; diamonds: a "
            "random patch of the same area (the baseline).",
        ),
        (
            "drop",
            "Score drop when a role is occluded",
            "Drop of the explained class's probability; diamonds: a random patch of the same area.",
        ),
    ):
        fig = _panels(data, metric, yrange=None, baseline=f"{metric}_random", names=names)
        if fig:
            out.append(FigureSpec(f"fig-{metric}", title, note, fig))
    return out
