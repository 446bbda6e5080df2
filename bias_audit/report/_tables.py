"""Tables of the report: human column labels, display strings, and a CSV download of each.

The CSV holds the table's values at full precision (the page shows them rounded); it travels
inside the file as a ``data:`` URI, so the report still needs no network.
"""

from __future__ import annotations

import csv
import io
import math
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Table", "fmt", "ci_text", "label", "frame_table", "LABELS"]

#: Column names of the run folder's tables as the report's readers know them.
LABELS: dict[str, str] = {
    "model": "model",
    "model_a": "model A",
    "model_b": "model B",
    "cell": "cell",
    "n": "n",
    "n_cells": "cells compared",
    "metric": "metric",
    "value": "value",
    "ci_low": "95% CI low",
    "ci_high": "95% CI high",
    "p_value": "p",
    "p_adjusted": "adjusted p (Holm)",
    "gap": "gap",
    "diff": "difference",
    "attribute": "group attribute",
    "row": "data row",
    "column": "column",
    "reason": "reason",
    "path": "file",
    "small": "small cell",
    "direction": "direction",
    "text": "",
}
_FORMULA = re.compile(r"^[=+\-@\t\r]")


def label(name: str) -> str:
    """A column's human label: the table above, else the name with spaces for underscores."""
    return LABELS.get(name) or name.replace("_", " ")


def fmt(value: Any, digits: int = 3) -> str:
    """A value as shown: NaN and None as an en dash, floats to ``digits`` significant places."""
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
        text = f"{v:.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def ci_text(lo: Any, hi: Any) -> str:
    """``[lo, hi]``, or empty when either end is missing."""
    if lo is None or hi is None or any(isinstance(v, float) and math.isnan(v) for v in (lo, hi)):
        return ""
    return f"[{fmt(lo)}, {fmt(hi)}]"


def _csv_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    # A spreadsheet runs a cell starting with = + - @ as a formula; a quote keeps it text.
    if isinstance(value, str) and _FORMULA.match(value):
        return "'" + value
    return value


@dataclass(frozen=True)
class Table:
    """A table as shown (``columns``, ``rows`` of display strings) and as downloaded
    (``csv_columns``, ``csv_rows`` at full precision).

    ``classes`` optionally gives each shown row a CSS class (e.g. a change's direction).
    """

    name: str
    columns: list[str]
    rows: list[list[str]]
    csv_columns: list[str]
    csv_rows: list[list[Any]]
    note: str = ""
    classes: list[str] = field(default_factory=list)

    @property
    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.csv_columns)
        writer.writerows([_csv_cell(v) for v in row] for row in self.csv_rows)
        return buf.getvalue()

    @property
    def csv_uri(self) -> str:
        """The CSV as a ``data:`` URI: every reserved character percent-encoded."""
        return "data:text/csv;charset=utf-8," + urllib.parse.quote(self.csv_text, safe="")

    @property
    def filename(self) -> str:
        return re.sub(r"[^\w.-]+", "_", self.name).strip("_") + ".csv"

    @classmethod
    def of(
        cls,
        name: str,
        columns: Sequence[str],
        raw_rows: Sequence[Sequence[Any]],
        *,
        shown: Sequence[Sequence[str]] | None = None,
        note: str = "",
        classes: Sequence[str] = (),
    ) -> Table:
        """A table whose download holds ``raw_rows`` under ``columns``; ``shown`` defaults to
        the raw values formatted."""
        rows = (
            [list(r) for r in shown]
            if shown is not None
            else [[fmt(v) for v in r] for r in raw_rows]
        )
        return cls(
            name=name,
            columns=list(columns),
            rows=rows,
            csv_columns=list(columns),
            csv_rows=[list(r) for r in raw_rows],
            note=note,
            classes=list(classes),
        )


def frame_table(name: str, frame: pd.DataFrame | None, *, max_rows: int = 200) -> Table | None:
    """A run-folder table: human labels on the page, every row and the raw names in the CSV."""
    if frame is None:
        return None
    shown = frame.head(max_rows)
    note = ""
    if len(frame) > max_rows:
        note = f"first {max_rows} of {len(frame)} rows; the CSV has all"
    return Table(
        name=name,
        columns=[label(str(c)) for c in frame.columns],
        rows=[[fmt(v) for v in r] for r in shown.itertuples(index=False, name=None)],
        csv_columns=[str(c) for c in frame.columns],
        csv_rows=[list(r) for r in frame.itertuples(index=False, name=None)],
        note=note,
    )
