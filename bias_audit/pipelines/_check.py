"""The review gate: criteria over a finished run's tables, for CI.

Judged from ``groups.parquet`` and ``summary.json`` alone, so a gate can run on a copy of
a run folder without the models or the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bias_audit.core._naming import CONFOUNDER, column
from bias_audit.core.stats import ALL_CELL, worst_group
from bias_audit.errors import ConfigError, RunError
from bias_audit.io.run_folder import read_summary, read_table

__all__ = ["Criterion", "check_run"]


@dataclass(frozen=True, kw_only=True)
class Criterion:
    """One judged criterion.

    ``status`` is "pass", "fail" or "too_small" (some valid data, too little to judge; not a
    failure). A criterion with no valid data at all (``n == 0``) is a "fail".
    """

    name: str
    model: str
    cell: str | None
    value: float
    limit: float
    n: int
    status: str

    @property
    def line(self) -> str:
        where = f"{self.model}" + (f" [{self.cell}]" if self.cell else "")
        value = "n/a" if math.isnan(self.value) else f"{self.value:.4f}"
        if self.status == "fail" and self.n == 0:
            return (
                f"FAIL {where}: {self.name}: no valid data (n=0), nothing to judge; "
                "a model without valid values does not pass"
            )
        if self.status == "too_small":
            return f"TOO SMALL {where}: {self.name}: n={self.n} is below the minimum group size"
        limit = f"limit {self.limit:g}, n={self.n}"
        return f"{self.status.upper()} {where}: {self.name} = {value} ({limit})"


def _load(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: not a run folder (no such directory)")
    return read_table(run_dir / "groups.parquet"), read_summary(run_dir)


def check_run(
    run_dir: str | Path,
    *,
    max_confounder_mass: float | None = None,
    min_worst_group_accuracy: float | None = None,
    max_flip_rate: float | None = None,
    model: str | None = None,
) -> list[Criterion]:
    """Judge a finished run against review criteria, for every model (or only ``model``).

    Every number is read from ``groups.parquet`` (its ``all`` cell for the means), so the gate
    judges the values the report and the findings show.

    - ``max_confounder_mass``: mean ``mass:confounder`` of the model over all images (NaN
      rows, i.e. all-zero maps or no confounder region, are left out).
    - ``min_worst_group_accuracy``: accuracy of the worst cell (groups x label) among cells with
      at least ``min_group_size`` images; smaller cells are listed as too small to judge.
    - ``max_flip_rate``: share of images whose prediction flips when the confounder regions are
      occluded (``flip:confounder``).

    A criterion with no valid data at all (n = 0, e.g. a model whose every map is NaN) fails:
    a broken model must not pass the gate. With some but fewer than ``min_group_size`` valid
    values it is "too_small" (not judged).

    Returns the criteria in order; the run passes when none has status "fail".
    """
    run_dir = Path(run_dir)
    asked = {
        "max_confounder_mass": max_confounder_mass,
        "min_worst_group_accuracy": min_worst_group_accuracy,
        "max_flip_rate": max_flip_rate,
    }
    if all(v is None for v in asked.values()):
        raise ConfigError(
            "check: no criterion given; pass max_confounder_mass, "
            "min_worst_group_accuracy or max_flip_rate"
        )
    for key, value in asked.items():
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ConfigError(f"check: --{key.replace('_', '-')}: expected 0..1, got {value!r}")
    groups, summary = _load(run_dir)
    min_n = int(summary.get("stats", {}).get("min_group_size", 20))
    # min_group_size may be stricter here than in the run (a copy of the folder re-judged).
    groups = groups.assign(small=groups["n_valid"] < min_n)
    models = list(dict.fromkeys(groups["model"])) if len(groups) else []
    if model is not None:
        if model not in models:
            raise ConfigError(f"check: model: no model {model!r} in {run_dir}; has {models}")
        models = [model]

    out: list[Criterion] = []
    source = run_dir / "groups.parquet"
    for name in models:
        rows = groups[groups["model"] == name]
        if max_confounder_mass is not None:
            out.append(
                _mean_criterion(
                    rows, column("mass", CONFOUNDER), "confounder mass", max_confounder_mass,
                    name, source,
                )
            )  # fmt: skip
        if min_worst_group_accuracy is not None:
            out.extend(_accuracy_criteria(rows, min_worst_group_accuracy, name))
        if max_flip_rate is not None:
            out.append(
                _mean_criterion(
                    rows, column("flip", CONFOUNDER), "confounder flip rate", max_flip_rate,
                    name, source,
                )
            )  # fmt: skip
    return out


def _status(value: float, limit: float, n: int, small: bool, *, upper: bool) -> str:
    if n == 0 or not math.isfinite(value):
        return "fail"
    if small:
        return "too_small"
    return "pass" if (value <= limit if upper else value >= limit) else "fail"


def _mean_criterion(rows, metric, label, limit, model, source) -> Criterion:
    hit = rows[(rows["cell"] == ALL_CELL) & (rows["metric"] == metric)]
    if hit.empty:
        hint = " (interventions were disabled)" if metric.startswith("flip") else ""
        raise RunError(f"{source}: no rows for metric {metric!r}{hint}")
    row = hit.iloc[0]
    n, value = int(row["n_valid"]), float(row["value"])
    return Criterion(
        name=label, model=model, cell=None, value=value, limit=limit, n=n,
        status=_status(value, limit, n, bool(row["small"]), upper=True),
    )  # fmt: skip


def _accuracy_criteria(rows, limit, model) -> list[Criterion]:
    acc = rows[(rows["metric"] == "accuracy") & (rows["cell"] != ALL_CELL)]
    out = [
        Criterion(
            name="worst group accuracy", model=model, cell=r["cell"], value=float(r["value"]),
            limit=limit, n=int(r["n_valid"]), status="too_small",
        )
        for r in acc.to_dict("records")
        if r["small"]
    ]  # fmt: skip
    worst = worst_group(rows).iloc[0]
    if worst["n_cells"]:
        value, n = float(worst["value"]), int(worst["n_valid"])
        status = _status(value, limit, n, False, upper=False)
        out.insert(
            0,
            Criterion(
                name="worst group accuracy", model=model, cell=worst["cell"], value=value,
                limit=limit, n=n, status=status,
            ),
        )  # fmt: skip
    elif not out:
        out.append(
            Criterion(
                name="worst group accuracy", model=model, cell=None, value=math.nan,
                limit=limit, n=0, status="fail",
            )
        )  # fmt: skip
    return out
