"""The review gate: criteria over a finished run's tables, for CI.

Judged from ``groups.parquet`` and ``summary.json`` alone, so a gate can run on a copy of
a run folder without the models or the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bias_audit.core.stats import worst_group
from bias_audit.core.verdicts import CRITERIA, GATE_DEFAULTS, judge_criteria
from bias_audit.errors import ConfigError, RunError
from bias_audit.io.run_folder import read_summary, read_table

__all__ = ["Criterion", "check_run"]


@dataclass(frozen=True, kw_only=True)
class Criterion:
    """One judged criterion, as in ``summary.json``'s verdicts.

    ``status`` is "pass", "concern" (beyond the limit, but the 95% interval crosses it),
    "fail" (the whole interval beyond the limit) or "no_data" (no valid value: counts as a
    fail, a broken model must not pass); "not_measured" when the run's own gate names a
    criterion the run did not measure (not a failure; asked for by a limit, it is an error).
    """

    name: str
    label: str
    model: str
    cell: str | None
    value: float
    ci_low: float
    ci_high: float
    limit: float
    n: int
    status: str

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "no_data")

    @property
    def line(self) -> str:
        where = f"{self.model}" + (f" [{self.cell}]" if self.cell else "")
        if self.status == "not_measured":
            return f"NOT MEASURED {where}: {self.label} ({self.name}): not in this run"
        if self.status == "no_data":
            return (
                f"FAIL {where}: {self.label} ({self.name}): no valid data (n={self.n}), nothing "
                "to judge; a model without valid values does not pass"
            )
        value = "n/a" if math.isnan(self.value) else f"{self.value:.4f}"
        ci = (
            f" [{self.ci_low:.4f}, {self.ci_high:.4f}]"
            if math.isfinite(self.ci_low) and math.isfinite(self.ci_high)
            else ""
        )
        return (
            f"{self.status.upper()} {where}: {self.label} ({self.name}) = {value}{ci} "
            f"(limit {self.limit:g}, n={self.n})"
        )


def _load(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: not a run folder (no such directory)")
    return read_table(run_dir / "groups.parquet"), read_summary(run_dir)


def check_run(
    run_dir: str | Path,
    *,
    max_confounder_mass: float | None = None,
    max_confounder_lift: float | None = None,
    max_flip_excess: float | None = None,
    min_worst_group_accuracy: float | None = None,
    max_flip_rate: float | None = None,
    model: str | None = None,
) -> list[Criterion]:
    """Judge a finished run against review criteria, for every model (or only ``model``).

    Every number is read from ``groups.parquet`` (its ``all`` cell, and the worst judged cell
    for accuracy) and judged as the run's verdicts are (:mod:`bias_audit.core.verdicts`), so
    the gate, the verdicts and the report agree. With no limit given, the run's ``[gate]``
    (recorded in ``summary.json``) is applied; with some, only those.

    - ``max_confounder_mass``: mean ``mass:confounder`` over all images.
    - ``max_confounder_lift``: that mass over the confounders' mean share of the image.
    - ``max_flip_excess``: flip rate when the confounders are occluded minus the rate for
      same-area random patches.
    - ``min_worst_group_accuracy``: accuracy of the worst cell (groups x label) with at least
      ``min_group_size`` images.
    - ``max_flip_rate``: the flip rate itself.

    Returns the criteria in order; the run passes when none is "fail" or "no_data".
    """
    run_dir = Path(run_dir)
    asked = {
        "max_confounder_mass": max_confounder_mass,
        "max_confounder_lift": max_confounder_lift,
        "max_flip_excess": max_flip_excess,
        "min_worst_group_accuracy": min_worst_group_accuracy,
        "max_flip_rate": max_flip_rate,
    }
    for key, value in asked.items():
        low, high = (0, 1e6) if key == "max_confounder_lift" else (
            (-1, 1) if key == "max_flip_excess" else (0, 1)
        )  # fmt: skip
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not (ok and low <= value <= high):
            raise ConfigError(f"check: {key}: expected {low:g}..{high:g}, got {value!r}")
    groups, summary = _load(run_dir)
    limits = {k: float(v) for k, v in asked.items() if v is not None}
    given = bool(limits)
    if not given:
        limits = {k: float(v) for k, v in (summary.get("gate") or GATE_DEFAULTS).items()}
    min_n = int(summary.get("stats", {}).get("min_group_size", 20))
    # min_group_size may be stricter here than in the run (a copy of the folder re-judged).
    small = groups["n_valid"] < min_n
    groups = groups.assign(
        small=small,
        ci_low=groups["ci_low"].where(~small),
        ci_high=groups["ci_high"].where(~small),
    )
    models = list(dict.fromkeys(groups["model"])) if len(groups) else []
    if model is not None:
        if model not in models:
            raise ConfigError(f"check: model: no model {model!r} in {run_dir}; has {models}")
        models = [model]
    worst = worst_group(groups)
    out: list[Criterion] = []
    for name in models:
        criteria, missing = judge_criteria(groups, worst, name, limits)
        if missing and given:
            hint = " (interventions were disabled?)" if any("flip" in m for m in missing) else ""
            raise RunError(
                f"{run_dir / 'groups.parquet'}: nothing to judge {', '.join(missing)} on{hint}"
            )
        out.extend(
            Criterion(
                name=c["name"], label=c["label"], model=name, cell=c["cell"], value=c["value"],
                ci_low=c["ci_low"], ci_high=c["ci_high"], limit=c["limit"], n=c["n"],
                status=c["status"],
            )
            for c in criteria
        )  # fmt: skip
        # The run's own gate on a run that did not measure a criterion (no confounder regions,
        # interventions off, an older run): said, not failed.
        out.extend(
            Criterion(
                name=m, label=CRITERIA[m][0], model=name, cell=None, value=math.nan,
                ci_low=math.nan, ci_high=math.nan, limit=limits[m], n=0, status="not_measured",
            )
            for m in missing
        )  # fmt: skip
    return out
