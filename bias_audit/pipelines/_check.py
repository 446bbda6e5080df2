"""The review gate: criteria over a finished run's samples table, for CI.

Judged from ``samples.parquet`` and ``summary.json`` alone, so a gate can run on a copy of
a run folder without the models or the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bias_audit.core._naming import CONFOUNDER, cell_name, column
from bias_audit.errors import ConfigError, RunError
from bias_audit.io.run_folder import read_summary, read_table

__all__ = ["Criterion", "check_run"]


@dataclass(frozen=True, kw_only=True)
class Criterion:
    """One judged criterion. ``status`` is "pass", "fail" or "too_small" (not judged)."""

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
        if self.status == "too_small":
            return f"TOO SMALL {where}: {self.name}: n={self.n} is below the minimum group size"
        limit = f"limit {self.limit:g}, n={self.n}"
        return f"{self.status.upper()} {where}: {self.name} = {value} ({limit})"


def _load(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: not a run folder (no such directory)")
    return read_table(run_dir / "samples.parquet"), read_summary(run_dir)


def check_run(
    run_dir: str | Path,
    *,
    max_confounder_mass: float | None = None,
    min_worst_group_accuracy: float | None = None,
    max_flip_rate: float | None = None,
    model: str | None = None,
) -> list[Criterion]:
    """Judge a finished run against review criteria, for every model (or only ``model``).

    - ``max_confounder_mass``: mean ``mass:confounder`` of the model over all images (NaN
      rows, i.e. all-zero maps or no confounder region, are left out).
    - ``min_worst_group_accuracy``: accuracy of the worst cell (groups x label) among cells with
      at least ``min_group_size`` images; smaller cells are listed as too small to judge.
    - ``max_flip_rate``: share of images whose prediction flips when the confounder regions are
      occluded (``flip:confounder``).

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
            "check: no criterion given; pass --max-confounder-mass, "
            "--min-worst-group-accuracy or --max-flip-rate"
        )
    for key, value in asked.items():
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ConfigError(f"check: --{key.replace('_', '-')}: expected 0..1, got {value!r}")
    samples, summary = _load(run_dir)
    data = summary.get("data", {})
    groups = list(data.get("groups", []))
    min_n = int(summary.get("stats", {}).get("min_group_size", 20))
    models = list(dict.fromkeys(samples["model"])) if len(samples) else []
    if model is not None:
        if model not in models:
            raise ConfigError(f"check: --model: no model {model!r} in {run_dir}; has {models}")
        models = [model]

    out: list[Criterion] = []
    for name in models:
        rows = samples[samples["model"] == name]
        if max_confounder_mass is not None:
            out.append(
                _mean_criterion(
                    rows,
                    column("mass", CONFOUNDER),
                    "confounder mass",
                    max_confounder_mass,
                    name,
                    min_n,
                    run_dir,
                    upper=True,
                )
            )
        if min_worst_group_accuracy is not None:
            out.extend(_worst_group(rows, groups, min_worst_group_accuracy, name, min_n))
        if max_flip_rate is not None:
            out.append(
                _mean_criterion(
                    rows,
                    column("flip", CONFOUNDER),
                    "confounder flip rate",
                    max_flip_rate,
                    name,
                    min_n,
                    run_dir,
                    upper=True,
                )
            )
    return out


def _mean_criterion(rows, col, label, limit, model, min_n, run_dir, *, upper) -> Criterion:
    if col not in rows.columns:
        hint = " (interventions were disabled)" if col.startswith("flip") else ""
        raise RunError(f"{run_dir / 'samples.parquet'}: no column {col!r}{hint}")
    values = rows[col].astype(float).dropna()
    n = int(len(values))
    value = float(values.mean()) if n else math.nan
    if n < min_n:
        status = "too_small"
    else:
        status = "pass" if (value <= limit if upper else value >= limit) else "fail"
    return Criterion(
        name=label, model=model, cell=None, value=value, limit=limit, n=n, status=status
    )


def _worst_group(rows, groups, limit, model, min_n) -> list[Criterion]:
    keys = [*groups, "label"]
    out: list[Criterion] = []
    judged: list[Criterion] = []
    for values, cell in rows.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        n = int(len(cell))
        acc = float(cell["correct"].astype(float).mean())
        crit = Criterion(
            name="worst group accuracy",
            model=model,
            cell=cell_name(values),
            value=acc,
            limit=limit,
            n=n,
            status="too_small" if n < min_n else "pass",
        )
        (judged if n >= min_n else out).append(crit)
    if judged:
        worst = min(judged, key=lambda c: c.value)
        status = "pass" if worst.value >= limit else "fail"
        out.insert(0, Criterion(**{**worst.__dict__, "status": status}))
    return out
