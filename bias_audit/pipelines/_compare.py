"""``compare``: two runs over the same images, e.g. two versions of a model, paired by id."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bias_audit.core._naming import CONFOUNDER, ROLES, column
from bias_audit.core.stats import paired_comparison
from bias_audit.errors import ConfigError, RunError
from bias_audit.io.run_folder import read_table

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
    """Paired comparison of one model of each run over the images both runs share.

    Args:
        run_a, run_b: run folders (``samples.parquet`` is read).
        model_a, model_b: the model of each run (default: each run's first model).
        bootstrap: paired bootstrap resamples of the mean difference's 95% CI.
        seed: seed of the resampling.

    Returns:
        :func:`bias_audit.metrics.paired_comparison` over all shared images, one row per
        compared column (:data:`COMPARED`, when both runs have it): ``model_a`` and
        ``model_b`` are ``"A/<name>"`` and ``"B/<name>"``; ``mean_diff`` is A - B, with its
        bootstrap CI and the two-sided Wilcoxon signed-rank ``p_value``.

    Raises:
        RunError: a missing run folder or table, or no shared image ids.
        ConfigError: an unknown model name.
    """

    run_a, run_b = Path(run_a), Path(run_b)
    a = _pick(read_table(run_a / "samples.parquet"), model_a, run_a, "--model-a")
    b = _pick(read_table(run_b / "samples.parquet"), model_b, run_b, "--model-b")
    shared = set(a["id"]) & set(b["id"])
    if not shared:
        raise RunError(f"compare: {run_a} and {run_b} share no image ids")
    name_a, name_b = f"A/{a['model'].iloc[0]}", f"B/{b['model'].iloc[0]}"
    both = pd.concat(
        [
            a[a["id"].isin(shared)].assign(model=name_a),
            b[b["id"].isin(shared)].assign(model=name_b),
        ],
        ignore_index=True,
    )
    metrics = [
        "accuracy" if m == "correct" else m for m in COMPARED if m in a.columns and m in b.columns
    ]
    return paired_comparison(
        both, name_a, name_b, metrics=metrics, groups=[], by_cell=False, min_group_size=2,
        n_boot=bootstrap, seed=seed,
    )  # fmt: skip
