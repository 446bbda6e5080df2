"""``compare``: two runs over the same images, e.g. two versions of a model, paired by id."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .._naming import CONFOUNDER, ROLES, column
from ..errors import ConfigError, RunError
from ._store import read_table

__all__ = ["compare_runs", "COMPARED"]

#: Columns compared, when both runs have them.
COMPARED = (
    "correct",
    "prob",
    *(column("mass", r) for r in ROLES),
    column("flip", CONFOUNDER),
)


def _pick(samples: pd.DataFrame, model: str | None, run: Path, flag: str) -> pd.DataFrame:
    models = list(dict.fromkeys(samples["model"]))
    if not models:
        raise RunError(f"{run / 'samples.parquet'}: no rows")
    name = models[0] if model is None else model
    if name not in models:
        raise ConfigError(f"compare: {flag}: no model {name!r} in {run}; it has {models}")
    return samples[samples["model"] == name]


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    *,
    model_a: str | None = None,
    model_b: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired differences (B - A) over the images both runs share.

    Args:
        run_a, run_b: run folders (``samples.parquet`` is read).
        model_a, model_b: the model of each run (default: each run's first model).
        bootstrap: paired bootstrap resamples of the mean difference's 95% CI.
        seed: seed of the resampling.

    Returns:
        One row per compared column: ``metric``, ``model_a``, ``model_b``, ``n`` (pairs with
        both values finite), ``mean_a``, ``mean_b``, ``diff`` (mean of B - A), ``ci_low``,
        ``ci_high``, ``p_value`` (two-sided Wilcoxon signed-rank; NaN when all differences are 0).

    Raises:
        RunError: a missing run folder or table, or no shared image ids.
        ConfigError: an unknown model name.
    """
    from scipy.stats import wilcoxon

    run_a, run_b = Path(run_a), Path(run_b)
    a = _pick(read_table(run_a / "samples.parquet"), model_a, run_a, "--model-a")
    b = _pick(read_table(run_b / "samples.parquet"), model_b, run_b, "--model-b")
    both = a.merge(b, on="id", suffixes=("_a", "_b"), validate="one_to_one")
    if both.empty:
        raise RunError(f"compare: {run_a} and {run_b} share no image ids")
    rng = np.random.default_rng(seed)
    rows = []
    for metric in COMPARED:
        if metric not in a.columns or metric not in b.columns:
            continue
        x = both[f"{metric}_a"].to_numpy(float)
        y = both[f"{metric}_b"].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        d = y[ok] - x[ok]
        n = int(ok.sum())
        lo = hi = p = math.nan
        if n >= 2 and bootstrap > 0:
            means = d[rng.integers(0, n, size=(bootstrap, n))].mean(axis=1)
            lo, hi = (float(v) for v in np.quantile(means, [0.025, 0.975]))
        if n >= 2 and np.any(d != 0):
            p = float(wilcoxon(d, zero_method="wilcox").pvalue)
        rows.append({
            "metric": metric, "model_a": str(a["model"].iloc[0]),
            "model_b": str(b["model"].iloc[0]), "n": n,
            "mean_a": float(x[ok].mean()) if n else math.nan,
            "mean_b": float(y[ok].mean()) if n else math.nan,
            "diff": float(d.mean()) if n else math.nan, "ci_low": lo, "ci_high": hi,
            "p_value": p,
        })  # fmt: skip
    return pd.DataFrame(rows)
