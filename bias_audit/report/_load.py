"""Read a run folder (written by ``audit``) into one frozen :class:`ReportData`.

The report reads nothing else: every number it shows comes from these files.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bias_audit.errors import DataError, RunError

__all__ = ["ReportData", "load_run", "REQUIRED_FILES", "SAMPLE_COLUMNS"]

#: Files without which there is no report to write.
REQUIRED_FILES: tuple[str, ...] = ("summary.json", "samples.parquet")
#: Columns of ``samples.parquet`` every chart relies on.
SAMPLE_COLUMNS: tuple[str, ...] = ("model", "id", "label", "pred", "correct")
GROUP_COLUMNS: tuple[str, ...] = (
    "model",
    "cell",
    "n",
    "small",
    "metric",
    "value",
    "ci_low",
    "ci_high",
)
_OPTIONAL_TABLES: tuple[str, ...] = (
    "gaps",
    "fairness",
    "comparisons",
    "skipped",
    "rates",
    "distributions",
)


@dataclass(frozen=True, kw_only=True)
class ReportData:
    """Everything the report shows, as read from one run folder.

    Attributes:
        run_dir: the run folder.
        summary: ``summary.json`` (NaN written as ``null`` comes back as ``None``).
        config_text: ``config.toml`` verbatim, else the summary's ``config`` string, else ``""``.
        samples: the samples table, one row per model x image.
        groups: the tidy ``groups.parquet`` table, or an empty frame with its columns.
        gaps, fairness, comparisons, skipped, rates, distributions: those tables, or ``None``
            when the file is absent (``rates``: ``stats.class_rates``; ``distributions``:
            ``stats.cell_quantiles``).
        gallery: ``gallery.json`` or ``None``.
        arrays: the arrays of ``maps.npz`` by key (``image/<key>``, ``masks/<key>``,
            ``map/<model>/<key>``); empty without a gallery.
    """

    run_dir: Path
    summary: Mapping[str, Any]
    config_text: str
    samples: pd.DataFrame
    groups: pd.DataFrame
    gaps: pd.DataFrame | None = None
    fairness: pd.DataFrame | None = None
    comparisons: pd.DataFrame | None = None
    skipped: pd.DataFrame | None = None
    rates: pd.DataFrame | None = None
    distributions: pd.DataFrame | None = None
    gallery: Mapping[str, Any] | None = None
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        """Model names in the order of ``summary.json`` (then any others in the samples)."""
        names = [str(m.get("name")) for m in self.summary.get("models", []) if m.get("name")]
        for name in self.samples["model"].astype(str).unique():
            if name not in names:
                names.append(name)
        return names

    @property
    def cells(self) -> list[dict[str, Any]]:
        """Cells with ``cell``, ``n`` and ``small``: from the summary, else from ``groups``."""
        cells = list(self.summary.get("data", {}).get("cells") or [])
        if cells:
            return cells
        if self.groups.empty:
            return []
        first = self.groups.drop_duplicates("cell")
        return [
            {"cell": str(r["cell"]), "n": int(r["n"]), "small": bool(r["small"])}
            for r in first.to_dict(orient="records")
        ]


def load_run(run_dir: str | os.PathLike[str]) -> ReportData:
    """Read the run folder ``run_dir``.

    Raises:
        RunError: the folder or one of :data:`REQUIRED_FILES` is missing.
        DataError: a file is unreadable or lacks a documented column or key (named).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run folder not found")
    for name in REQUIRED_FILES:
        if not (run_dir / name).is_file():
            raise RunError(f"{run_dir / name}: required file missing from the run folder")

    summary = _read_json(run_dir / "summary.json")
    if not isinstance(summary, dict):
        raise DataError(f"{run_dir / 'summary.json'}: expected a JSON object at the top level")

    samples = _read_table(run_dir / "samples.parquet", SAMPLE_COLUMNS)
    groups_path = run_dir / "groups.parquet"
    groups = _read_table(groups_path, GROUP_COLUMNS) if groups_path.is_file() else None
    if groups is None or groups.empty:
        groups = pd.DataFrame({c: pd.Series(dtype=object) for c in GROUP_COLUMNS})
    tables = {}
    for name in _OPTIONAL_TABLES:
        path = run_dir / f"{name}.parquet"
        tables[name] = _read_table(path, ()) if path.is_file() else None

    config_path = run_dir / "config.toml"
    if config_path.is_file():
        config_text = config_path.read_text(encoding="utf-8", errors="replace")
    else:
        config_text = str(summary.get("config") or "")

    gallery, arrays = _read_gallery(run_dir)
    return ReportData(
        run_dir=run_dir,
        summary=summary,
        config_text=config_text,
        samples=samples,
        groups=groups,
        gallery=gallery,
        arrays=arrays,
        **tables,
    )


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text, parse_constant=lambda c: math.nan)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable JSON ({err})") from err


def _read_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: unreadable parquet ({type(err).__name__}: {err})") from err
    # A table with no rows (the audit writes one when a statistic does not apply) is shown as
    # empty whatever its columns.
    missing = [c for c in required if c not in frame.columns]
    if missing and (len(frame) or len(frame.columns)):
        raise DataError(f"{path}: missing column {missing[0]!r}")
    return frame


def _read_gallery(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, np.ndarray]]:
    json_path, npz_path = run_dir / "gallery.json", run_dir / "maps.npz"
    if not json_path.is_file():
        return None, {}
    gallery = _read_json(json_path)
    if not isinstance(gallery, dict) or not isinstance(gallery.get("items"), list):
        raise DataError(f"{json_path}: expected an object with a list 'items'")
    if not npz_path.is_file():
        raise RunError(f"{npz_path}: missing, but {json_path.name} refers to it")
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{npz_path}: unreadable ({err})") from err
    for i, item in enumerate(gallery["items"]):
        key = item.get("key") if isinstance(item, dict) else None
        if not isinstance(key, str):
            raise DataError(f"{json_path}: items[{i}] has no string 'key'")
        if f"image/{key}" not in arrays:
            raise DataError(f"{npz_path}: missing array 'image/{key}' for gallery item {i}")
    return gallery, arrays
