"""The report's "Discovered strategies": per model and predicted class, the clusters of maps
and features with their numbers, flagged clusters first. Computes nothing: it reads
``discovery.json`` (mean maps, error slices) and draws the mean maps as small PNGs."""

from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bias_audit.errors import DataError
from bias_audit.report._images import data_uri, jet, normalize_map

__all__ = ["discovery_context"]

#: Side of a drawn mean map, in pixels (nearest-neighbour, so the 16x16 cells stay visible).
MAP_SIDE = 96


def _read(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "discovery.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not readable JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("clusters", []), list):
        raise DataError(f"{path}: expected an object with a 'clusters' list")
    return data


def _picture(mean_map: Any) -> str | None:
    scaled = normalize_map(np.asarray(mean_map, dtype=np.float64))
    if scaled is None:
        return None
    rgb = np.clip(np.rint(255.0 * jet(scaled)), 0, 255).astype(np.uint8)
    pil = Image.fromarray(rgb, mode="RGB").resize((MAP_SIDE, MAP_SIDE), Image.Resampling.NEAREST)
    return data_uri(pil, fmt="png")


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.0f}%"


def _enriched(entry: dict[str, Any]) -> str:
    over = entry.get("enrichment_over", "the class")
    parts = [
        f"{e['attribute']} = {e['value']}: {_pct(e['share'])} vs {_pct(e['class_share'])} "
        f"of {over} ({float(e['ratio']):.1f}x)"
        for e in entry.get("enrichment") or []
    ]
    return "; ".join(parts) or "–"


def discovery_context(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """``{"groups": [...], "slices": [...], "warnings": [...], "ran": bool}`` for the partial.

    Groups are per model, view and predicted class, flagged clusters first (the order of
    ``discovery.json``); each cluster carries its mean map as a PNG data URI.
    """
    data = _read(run_dir)
    clusters = data.get("clusters") or []
    groups = []
    key = lambda e: (str(e["model"]), str(e["view"]), str(e["class"]))  # noqa: E731
    for (model, view, cls), members in groupby(clusters, key=key):
        rows = [
            {
                "cluster": str(e["cluster"]),
                "flagged": bool(e["flagged"]),
                "picture": _picture(e.get("mean_map")),
                "size": int(e["size"]),
                "class_size": int(e["class_size"]),
                "accuracy": _pct(e["accuracy"]),
                "eigengap": "–" if e["eigengap"] is None else f"{float(e['eigengap']):.3f}",
                "consistency": _pct(e["consistency"]),
                "flip": _pct(e["flip"]),
                "flip_random": _pct(e["flip_random"]),
                "flip_place": _pct(e["flip_place"]),
                "flip_own": _pct(e["flip_own"]),
                "control": str(e["control"]),
                "score": "–"
                if e["intervention_score"] is None
                else f"{float(e['intervention_score']):+.2f}",
                "enrichment": _enriched(e),
                "typical": ", ".join(map(str, e.get("typical") or [])),
                "text": str(e["text"]),
            }
            for e in members
        ]
        groups.append({"model": model, "view": view, "class": cls, "clusters": rows})
    return {
        "ran": "discovery" in summary,
        "groups": groups,
        "slices": data.get("error_slices") or [],
        "warnings": [w for w in summary.get("warnings") or [] if isinstance(w, dict)],
    }
