"""The "Can these maps be trusted?" section: figures, tables and sentences.

Everything is read from ``summary.json``'s ``trust`` key (written by the trust phase, the same
as ``trust.json``); nothing here computes a statistic, it only picks and words the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bias_audit.report._figures import MODEL_COLORS, FigureSpec, plot_text

__all__ = ["trust_figures", "trust_context"]

_DASH = {"top_down": "solid", "bottom_up": "dash"}
_ORDER_NAME = {"top_down": "top-down", "bottom_up": "bottom-up"}


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _fmt(v: Any, pattern: str = "{:.2f}") -> str:
    f = _num(v)
    return "–" if not math.isfinite(f) else pattern.format(f)


def _models(trust: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    models = trust.get("models") or {}
    return [(str(k), v) for k, v in models.items() if isinstance(v, dict)]


def _color(i: int) -> str:
    return MODEL_COLORS[i % len(MODEL_COLORS)]


def _randomization_figure(trust: Mapping[str, Any]) -> dict[str, Any] | None:
    traces = []
    for i, (name, m) in enumerate(_models(trust)):
        rows = m.get("randomization") or []
        keys = dict.fromkeys((r["method"], r["order"]) for r in rows)
        for method, order in keys:
            pts = [r for r in rows if r["method"] == method and r["order"] == order]
            pts.sort(key=lambda r: r["step"])
            traces.append({
                "type": "scatter", "mode": "lines+markers",
                "name": plot_text(f"{name} · {method} · {_ORDER_NAME.get(order, order)}"),
                "x": [0.0] + [_num(r["share"]) for r in pts],
                "y": [1.0] + [_num(r["spearman"]) for r in pts],
                "text": [plot_text("original")] + [plot_text(r["modules"]) for r in pts],
                "line": {"color": _color(i), "dash": _DASH.get(order, "dot")},
            })  # fmt: skip
    if not traces:
        return None
    limit = _num(trust.get("max_spearman"))
    shapes = []
    if math.isfinite(limit):
        shapes.append({
            "type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": limit, "y1": limit,
            "line": {"color": "#999", "dash": "dot"},
        })  # fmt: skip
    return {
        "data": traces,
        "layout": {
            "xaxis": {"title": {"text": "share of the model's layers re-initialised"},
                      "range": [0, 1]},
            "yaxis": {"title": {"text": "Spearman with the original maps"}, "range": [-0.2, 1.05]},
            "shapes": shapes, "height": 380, "margin": {"t": 30},
        },
    }  # fmt: skip


def _layer_figure(trust: Mapping[str, Any]) -> dict[str, Any] | None:
    traces = []
    for i, (name, m) in enumerate(_models(trust)):
        rows = [r for r in m.get("layers") or [] if r.get("role") == "confounder"]
        for j, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
            pts = [r for r in rows if r["method"] == method]
            traces.append({
                "type": "bar", "name": plot_text(f"{name} · {method}"),
                "x": [plot_text(f"{r['layer']} ({r['layer_shape']})") for r in pts],
                "y": [_num(r["mass"]) for r in pts],
                "error_y": {
                    "type": "data", "symmetric": False,
                    "array": [_num(r["ci_high"]) - _num(r["mass"]) for r in pts],
                    "arrayminus": [_num(r["mass"]) - _num(r["ci_low"]) for r in pts],
                },
                "marker": {"color": _color(i), "opacity": 1.0 - 0.25 * (j % 3)},
            })  # fmt: skip
    if not traces:
        return None
    return {
        "data": traces,
        "layout": {
            "barmode": "group", "height": 360, "margin": {"t": 30},
            "yaxis": {"title": {"text": "confounder mass"}, "tickformat": ".0%"},
        },
    }  # fmt: skip


def _faithfulness_figure(trust: Mapping[str, Any]) -> dict[str, Any] | None:
    traces = []
    for i, (name, m) in enumerate(_models(trust)):
        rows = m.get("faithfulness") or []
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["fraction"])
            x = [_num(r["fraction"]) for r in pts]
            for key, dash, label in (("drop_top", "solid", "top pixels"),
                                     ("drop_random", "dot", "random pixels")):  # fmt: skip
                traces.append({
                    "type": "scatter", "mode": "lines+markers",
                    "name": plot_text(f"{name} · {method} · {label}"),
                    "x": x, "y": [_num(r[key]) for r in pts],
                    "line": {"color": _color(i), "dash": dash},
                })  # fmt: skip
    if not traces:
        return None
    return {
        "data": traces,
        "layout": {
            "height": 360, "margin": {"t": 30},
            "xaxis": {"title": {"text": "share of the pixels deleted"}, "tickformat": ".0%"},
            "yaxis": {"title": {"text": "drop of the target probability"}},
        },
    }  # fmt: skip


def trust_figures(summary: Mapping[str, Any]) -> list[FigureSpec]:
    """The section's charts (randomisation curves, layer chart, faithfulness curve)."""
    trust = summary.get("trust") or {}
    if not trust.get("enabled"):
        return []
    charts = (
        (_randomization_figure, "fig-trust-randomization", "Model-parameter randomisation",
         "Similarity (Spearman) between each method's maps on the trained model and on copies "
         "whose layers are re-initialised from the logits down (solid) or from the input up "
         "(dashed). Maps that explain the model must move away from 1; the dotted line is the "
         "level above which a method is flagged."),
        (_layer_figure, "fig-trust-layers", "Confounder attention by layer",
         "Share of each method's map on confounder regions (95% bootstrap interval) at the "
         "audited layer (first) and the spatial layers before it."),
        (_faithfulness_figure, "fig-trust-faithfulness",
         "Faithfulness: deleting the most attended pixels",
         "Drop of the explained class's probability when the most attended pixels (solid) or "
         "as many random pixels (dotted) are filled. A faithful map's pixels matter more."),
    )  # fmt: skip
    out = []
    for build, fig_id, title, caption in charts:
        fig = build(trust)
        if fig:
            out.append(FigureSpec(fig_id, title, caption, fig))
    return out


def _table(columns: list[str], rows: list[list[str]], note: str = "") -> dict[str, Any] | None:
    return {"columns": columns, "rows": rows, "note": note} if rows else None


def _sentences(name: str, m: dict[str, Any], trust: Mapping[str, Any]) -> list[str]:
    out = []
    rand = m.get("randomization") or []
    full = [r for r in rand if r["order"] == "top_down" and _num(r["share"]) == 1.0]
    limit = _num(trust.get("max_spearman"))
    for r in full:
        rho = _num(r["spearman"])
        kept = math.isfinite(rho) and rho > limit
        out.append(
            f"Randomisation: after every layer of {name} is re-initialised, {r['method']} maps "
            f"keep a Spearman correlation of {_fmt(rho)} (SSIM {_fmt(r['ssim'])}) with the "
            + (
                "original ones: they barely depend on what the model learned."
                if kept
                else "original ones: they depend on the model's weights, as they should."
            )
        )
    layers = [r for r in m.get("layers") or [] if r.get("role") == "confounder"]
    if layers:
        verdicts = {(r["method"], r["layer"]): r["verdict"] for r in layers}
        methods = list(dict.fromkeys(r["method"] for r in layers))
        steady = all(
            len({v for (mm, _), v in verdicts.items() if mm == method}) == 1 for method in methods
        )
        out.append(
            f"Layers: the confounder verdict of {name} "
            + ("is the same at every layer compared." if steady else "changes with the layer.")
        )
        at_target = {r["method"]: r["verdict"] for r in layers if r.get("is_target")}
        out.append(
            "Methods: "
            + (
                f"every method gives the same verdict ({next(iter(at_target.values()))})."
                if len(set(at_target.values())) == 1
                else "the methods disagree: "
                + ", ".join(f"{k} {v}" for k, v in at_target.items())
                + "."
            )
        )
    faith = m.get("faithfulness") or []
    for method in dict.fromkeys(r["method"] for r in faith):
        rows = sorted((r for r in faith if r["method"] == method), key=lambda r: r["fraction"])
        r = rows[0]
        better = any(_num(x["excess_ci_low"]) > 0 for x in rows)
        out.append(
            f"Faithfulness: deleting the {_fmt(r['fraction'], '{:.0%}')} most attended pixels of "
            f"{method} lowers the probability by {_fmt(r['drop_top'], '{:.3f}')}, random pixels "
            f"by {_fmt(r['drop_random'], '{:.3f}')}; "
            + (
                "the map points at evidence the model uses."
                if better
                else "the map does no better than chance."
            )  # fmt: skip
        )
    return out


def trust_context(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What ``_trust.html.j2`` needs: per model, its status, sentences, findings and tables."""
    trust = summary.get("trust") or {}
    if not trust.get("enabled"):
        return {"enabled": False, "models": []}
    findings = [f for f in trust.get("findings") or [] if isinstance(f, dict)]
    models = []
    for name, m in _models(trust):
        mine = [f for f in findings if f.get("model") == name]
        layers = [r for r in m.get("layers") or []]
        layer_rows = [
            [
                str(r["layer"]) + (" (audited)" if r.get("is_target") else ""),
                str(r["layer_shape"]), str(r["method"]), str(r["role"]),
                _fmt(r["mass"], "{:.1%}"),
                f"[{_fmt(r['ci_low'], '{:.1%}')}, {_fmt(r['ci_high'], '{:.1%}')}]",
                _fmt(r["lift"], "{:.1f}"), str(r.get("n", "")), str(r.get("verdict") or ""),
            ]
            for r in layers
        ]  # fmt: skip
        faith_rows = [
            [
                str(r["method"]), _fmt(r["fraction"], "{:.0%}"), _fmt(r["drop_top"], "{:.3f}"),
                _fmt(r["drop_random"], "{:.3f}"), _fmt(r["excess"], "{:.3f}"),
                f"[{_fmt(r['excess_ci_low'], '{:.3f}')}, {_fmt(r['excess_ci_high'], '{:.3f}')}]",
            ]
            for r in m.get("faithfulness") or []
        ]  # fmt: skip
        models.append({
            "name": name,
            "anchor": f"trust-{name}",
            "passed": not mine,
            "n": m.get("n"),
            "target_layer": m.get("target_layer"),
            "sentences": _sentences(name, m, trust),
            "findings": mine,
            "layer_table": _table(
                ["layer", "grid", "method", "role", "mass", "95% CI", "lift", "n", "verdict"],
                layer_rows,
                "The audited layer's rows side by side give the method agreement; the verdict "
                "is the severity the confounder-attention finding would get.",
            ),
            "faith_table": _table(
                ["method", "deleted", "drop (top)", "drop (random)", "excess", "95% CI"],
                faith_rows,
            ),
        })  # fmt: skip
    return {
        "enabled": True,
        "sample": trust.get("sample"),
        "methods": trust.get("methods") or [],
        "fill": trust.get("fill"),
        "models": models,
    }
