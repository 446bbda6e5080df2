"""Group statistics over the samples table: intervals, gaps, fairness, paired comparisons.

Every function returns a pandas DataFrame with the same columns and dtypes whatever the input,
also when it is empty. ``accuracy`` is the mean of the boolean ``correct`` column; any other
metric name is a float column of the samples table (``mass:hair`` ...), whose NaNs are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from scipy import stats

from bias_audit.core._naming import cell_name
from bias_audit.errors import ConfigError, DataError

__all__ = [
    "ALL_CELL",
    "bootstrap_ci",
    "cell_quantiles",
    "class_rates",
    "fairness_differences",
    "group_gaps",
    "group_stats",
    "holm",
    "paired_comparison",
    "wilson_interval",
    "worst_group",
]

#: Name of the cell that pools every image of a model.
ALL_CELL = "all"
ACCURACY = "accuracy"

# Cap on the elements of one resample index matrix (~40 MB of int64).
_CHUNK = 5_000_000


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence: expected a share in (0, 1), got {confidence!r}")
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(
    successes: float | np.ndarray, n: float | np.ndarray, *, confidence: float = 0.95
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Wilson score interval for a proportion.

    Args:
        successes: count(s) of successes.
        n: count(s) of trials, broadcast against ``successes``.
        confidence: coverage of the interval.

    Returns:
        ``(low, high)`` float64 arrays of the broadcast shape (0-d for scalars); NaN where n = 0.
    """
    z = _z(confidence)
    k = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        denom = 1 + z**2 / n
        center = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    bad = ~(n > 0)
    low = np.where(bad, np.nan, np.clip(center - half, 0, 1))
    high = np.where(bad, np.nan, np.clip(center + half, 0, 1))
    return low, high


def _boot_sums(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Sums of ``n_boot`` resamples, drawn as index matrices in memory-bounded chunks."""
    n = len(values)
    step = max(1, _CHUNK // max(n, 1))
    out = np.empty(n_boot)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].sum(axis=1)
    return out


def bootstrap_ci(
    values: np.ndarray | Sequence[float] | pd.Series,
    *,
    strata: np.ndarray | Sequence[object] | pd.Series | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean.

    Args:
        values: 1-D values; NaNs are dropped first.
        strata: optional labels, one per value; each stratum is then resampled on its own
            with its size fixed (a stratified bootstrap, e.g. by group cell).
        n_boot: number of resamples.
        seed: seed of the resampling.
        confidence: coverage of the interval.

    Returns:
        ``(low, high)``; NaN when fewer than 2 values remain.
    """
    _z(confidence)
    if n_boot < 1:
        raise ConfigError(f"n_boot: expected a positive count, got {n_boot!r}")
    v = np.asarray(values, dtype=float).ravel()
    keep = ~np.isnan(v)
    if strata is not None:
        codes = pd.factorize(np.asarray(strata, dtype=object).ravel())[0]
        if len(codes) != len(v):
            raise DataError(f"strata: {len(codes)} labels for {len(v)} values")
        codes = codes[keep]
    v = v[keep]
    if len(v) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if strata is None:
        sums = _boot_sums(v, n_boot, rng)
    else:
        sums = sum(
            (_boot_sums(v[codes == c], n_boot, rng) for c in np.unique(codes)), np.zeros(n_boot)
        )
    alpha = (1 - confidence) / 2
    low, high = np.quantile(sums / len(v), [alpha, 1 - alpha])
    return float(low), float(high)


def holm(p_values: np.ndarray | Sequence[float] | pd.Series) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values.

    NaNs stay NaN and do not count towards the family size.

    Args:
        p_values: any shape.

    Returns:
        float64 array of the same shape with the adjusted p-values (capped at 1, monotone in
        the raw p-values).
    """
    p = np.asarray(p_values, dtype=float)
    flat = p.ravel()
    out = np.full_like(flat, np.nan)
    known = np.flatnonzero(~np.isnan(flat))
    m = len(known)
    if m:
        order = known[np.argsort(flat[known], kind="stable")]
        scaled = flat[order] * (m - np.arange(m))
        out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out.reshape(p.shape)


# ----------------------------------------------------------------------------------------------
# Helpers shared by the table functions


def _class_counts(truth: np.ndarray, pred: np.ndarray, c: str) -> dict[str, tuple[int, int]]:
    """``{"tpr": (k, m), "fpr": (k, m)}``: images predicted ``c`` among the m whose label is /
    is not ``c``. The only place the class rates are counted."""
    pos = truth == c
    hit = pred == c
    return {
        "tpr": (int(hit[pos].sum()), int(pos.sum())),
        "fpr": (int(hit[~pos].sum()), int((~pos).sum())),
    }


def _need(samples: pd.DataFrame, columns: Sequence[str]) -> None:
    if not isinstance(samples, pd.DataFrame):
        raise DataError(f"samples: expected a pandas DataFrame, got {type(samples).__name__}")
    for c in columns:
        if c not in samples.columns:
            raise DataError(f"samples: missing column {c!r}")


def _metric_values(frame: pd.DataFrame, metric: str) -> np.ndarray:
    if metric == ACCURACY:
        col = frame["correct"]
        return np.where(col.isna(), np.nan, col.astype(float)).astype(float)
    try:
        return pd.to_numeric(frame[metric], errors="raise").to_numpy(dtype=float)
    except (TypeError, ValueError) as err:
        raise DataError(f"samples: column {metric!r} is not numeric") from err


def _metric_columns(metrics: Sequence[str]) -> list[str]:
    if isinstance(metrics, str):
        raise ConfigError(f"metrics: expected a list of column names, got {metrics!r}")
    return [m for m in metrics if m != ACCURACY]


def _typed(rows: list[dict[str, Any]], schema: Mapping[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(schema))
    return frame.astype(dict(schema))


def _cells(
    frame: pd.DataFrame, keys: list[str]
) -> Iterator[tuple[str, dict[str, object], pd.DataFrame]]:
    """(cell name, {key: value}, rows) for each observed combination, in sorted order."""
    if not keys:
        return
    for values, part in frame.groupby(keys, sort=True, dropna=False, observed=True):
        values = values if isinstance(values, tuple) else (values,)
        yield cell_name(values), dict(zip(keys, values, strict=True)), part


def _strata(frame: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """(len(frame),) integer code of each row's group cell."""
    if not keys or frame.empty:
        return np.zeros(len(frame), dtype=np.int64)
    return frame.groupby(keys, sort=False, dropna=False, observed=True).ngroup().to_numpy()


def _check_min(min_group_size: int) -> None:
    if not isinstance(min_group_size, int | np.integer) or min_group_size < 0:
        raise ConfigError(f"min_group_size: expected a count >= 0, got {min_group_size!r}")


# ----------------------------------------------------------------------------------------------
# group_stats


def _stats_schema(groups: Sequence[str]) -> dict[str, str]:
    schema = {"model": "object", "cell": "object"}
    schema.update({g: "object" for g in groups})
    schema.update(
        {
            "label": "object",
            "n": "int64",
            "n_valid": "int64",
            "small": "bool",
            "metric": "object",
            "value": "float64",
            "ci_low": "float64",
            "ci_high": "float64",
        }
    )
    return schema


def _classes(samples: pd.DataFrame, label: str, classes: Sequence[str] | None) -> list[str]:
    if classes is not None:
        return [str(c) for c in classes]
    seen = set(samples[label].dropna().astype(str))
    if "pred" in samples.columns:
        seen |= set(samples["pred"].dropna().astype(str))
    return sorted(seen)


def group_stats(
    samples: pd.DataFrame,
    *,
    groups: Sequence[str],
    label: str = "label",
    metrics: Sequence[str] = (),
    classes: Sequence[str] | None = None,
    rates: bool = True,
    min_group_size: int = 20,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per-cell n, accuracy, class rates and metric means with intervals, in a tidy table.

    Cells are the observed combinations of the ``groups`` attributes and the label, for each
    model, plus one cell ``"all"`` per model (its group and label columns are None).

    Rows per cell:
        - ``accuracy``: mean of ``correct``, Wilson interval.
        - ``tpr:<class>`` / ``fpr:<class>`` (when ``rates``, needs ``pred``): share predicted
          ``<class>`` among images whose label is / is not ``<class>``, Wilson interval.
          ``n_valid`` counts those images; inside a label cell one of the two is undefined
          (n_valid 0, value NaN), so these are most useful in the ``all`` cell.
        - each column in ``metrics``: mean over images with a non-NaN value, percentile
          bootstrap interval (images resampled within the cell, ``n_boot`` times, ``seed``).

    A row with ``n_valid < min_group_size`` is ``small``: its value is shown but its interval
    is NaN.

    Args:
        samples: the samples table (``model``, ``correct``, ``label``, groups, metric columns).
        groups: group attribute columns, e.g. ``["gender"]``.
        label: column holding the true class name.
        metrics: sample-metric columns to summarise (``"accuracy"`` is always included).
        classes: class names for the rates; by default the sorted names seen in label/pred.
        rates: whether to add the ``tpr:``/``fpr:`` rows.
        min_group_size: smallest n_valid that gets an interval.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        confidence: coverage of every interval.

    Returns:
        DataFrame with columns ``model, cell, <groups...>, label, n, n_valid, small, metric,
        value, ci_low, ci_high``.
    """
    groups = list(groups)
    cols = _metric_columns(metrics)
    _check_min(min_group_size)
    _need(samples, ["model", "correct", label, *groups, *cols, *(["pred"] if rates else [])])
    class_names = _classes(samples, label, classes) if rates else []
    keys = [*groups, label]
    rows: list[dict[str, Any]] = []

    def summarise(
        model: object, cell: str, attrs: Mapping[str, object], part: pd.DataFrame
    ) -> None:
        base = {"model": model, "cell": cell, **{g: attrs.get(g) for g in groups}}
        base["label"] = attrs.get(label)
        n = len(part)

        def add(metric: str, n_valid: int, value: float, low: float, high: float) -> None:
            small = n_valid < min_group_size
            if small:
                low = high = float("nan")
            rows.append(
                {**base, "n": n, "n_valid": n_valid, "small": small, "metric": metric,
                 "value": value, "ci_low": low, "ci_high": high}
            )  # fmt: skip

        acc = _metric_values(part, ACCURACY)
        acc = acc[~np.isnan(acc)]
        lo, hi = map(float, wilson_interval(acc.sum(), len(acc), confidence=confidence))
        add(ACCURACY, len(acc), acc.mean() if len(acc) else np.nan, lo, hi)
        if class_names:
            truth = part[label].astype(str).to_numpy()
            pred = part["pred"].astype(str).to_numpy()
            for c in class_names:
                for name, (k, m) in _class_counts(truth, pred, c).items():
                    lo, hi = map(float, wilson_interval(k, m, confidence=confidence))
                    add(f"{name}:{c}", m, k / m if m else np.nan, lo, hi)
        # The pooled cell is resampled within each group cell, as the references ask.
        strata = _strata(part, keys) if cell == ALL_CELL else None
        for metric in cols:
            raw = _metric_values(part, metric)
            v = raw[~np.isnan(raw)]
            if len(v) >= max(min_group_size, 2):
                lo, hi = bootstrap_ci(
                    raw, strata=strata, n_boot=n_boot, seed=seed, confidence=confidence
                )
            else:
                lo = hi = np.nan
            add(metric, len(v), float(v.mean()) if len(v) else np.nan, lo, hi)

    for model, frame in samples.groupby("model", sort=False, observed=True):
        summarise(model, ALL_CELL, {}, frame)
        for cell, attrs, part in _cells(frame, keys):
            summarise(model, cell, attrs, part)
    return _typed(rows, _stats_schema(groups))


# ----------------------------------------------------------------------------------------------
# worst_group

_WORST_SCHEMA = {
    "model": "object",
    "metric": "object",
    "n_cells": "int64",
    "cell": "object",
    "n": "int64",
    "n_valid": "int64",
    "value": "float64",
    "ci_low": "float64",
    "ci_high": "float64",
    "overall": "float64",
}


def worst_group(table: pd.DataFrame, *, metric: str = ACCURACY) -> pd.DataFrame:
    """The cell with the lowest ``metric`` per model, read from a :func:`group_stats` table.

    Judged cells are the rows of ``metric`` other than ``"all"`` that are not ``small`` and
    have a value; ties go to the first cell in the table's (sorted) order. The row carries the
    cell's own value and interval, so whoever shows the worst group shows the table's numbers.

    Args:
        table: ``group_stats`` output (``model, cell, n, n_valid, small, metric, value,
            ci_low, ci_high``); ``n``, ``ci_low`` and ``ci_high`` may be absent (then 0 / NaN).
        metric: the metric whose lowest cell is wanted.

    Returns:
        DataFrame with columns ``model, metric, n_cells, cell, n, n_valid, value, ci_low,
        ci_high, overall``, one row per model of ``table``. ``n_cells`` counts the judged
        cells; with none, ``cell`` is missing and the numbers are NaN / 0. ``overall`` is the
        value of the ``"all"`` cell (NaN without one).
    """
    _need(table, ["model", "cell", "metric", "value", "n_valid", "small"])
    rows: list[dict[str, Any]] = []
    for model, part in table.groupby("model", sort=False, observed=True):
        part = part[part["metric"] == metric]
        pooled = part[part["cell"] == ALL_CELL]
        row: dict[str, Any] = {"model": model, "metric": metric, "n_cells": 0, "cell": None, "n": 0}
        row["n_valid"] = 0
        row["overall"] = float(pooled["value"].iloc[0]) if len(pooled) else np.nan
        judged = part[
            (part["cell"] != ALL_CELL) & ~part["small"].astype(bool) & part["value"].notna()
        ]
        if len(judged):
            worst = judged.iloc[int(np.argmin(judged["value"].to_numpy(dtype=float)))]
            row.update(
                n_cells=len(judged), cell=worst["cell"], n=int(worst.get("n", 0)),
                n_valid=int(worst["n_valid"]), value=float(worst["value"]),
                ci_low=float(worst.get("ci_low", np.nan)),
                ci_high=float(worst.get("ci_high", np.nan)),
            )  # fmt: skip
        rows.append(row)
    return _typed(rows, _WORST_SCHEMA)


# ----------------------------------------------------------------------------------------------
# class_rates

_RATES_SCHEMA = {
    "model": "object",
    "attribute": "object",
    "value": "object",
    "class": "object",
    "n": "int64",
    "tpr": "float64",
    "tpr_low": "float64",
    "tpr_high": "float64",
    "fpr": "float64",
    "fpr_low": "float64",
    "fpr_high": "float64",
    "tpr_gap": "float64",
    "fpr_gap": "float64",
}


def class_rates(
    samples: pd.DataFrame,
    *,
    groups: Sequence[str],
    label: str = "label",
    classes: Sequence[str] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """True- and false-positive rate of each class within each value of each group attribute.

    For class c among the images whose attribute has value g: TPR = P(pred = c | label = c),
    FPR = P(pred = c | label != c), each with its Wilson interval. ``tpr_gap`` / ``fpr_gap``
    are the largest minus the smallest rate over the attribute's values (the same on every
    row of that model x attribute x class); NaN with fewer than two defined rates.

    Returns:
        DataFrame with columns ``model, attribute, value, class, n, tpr, tpr_low, tpr_high,
        fpr, fpr_low, fpr_high, tpr_gap, fpr_gap``, one row per model x attribute x class x
        value (values sorted as strings).
    """
    groups = list(groups)
    _need(samples, ["model", "pred", label, *groups])
    class_names = _classes(samples, label, classes)
    rows: list[dict[str, Any]] = []
    for model, frame in samples.groupby("model", sort=False, observed=True):
        truth = frame[label].astype(str).to_numpy()
        pred = frame["pred"].astype(str).to_numpy()
        for attr in groups:
            values = frame[attr].astype(str).to_numpy()
            for c in class_names:
                block = []
                for g in sorted(set(values)):
                    sel = values == g
                    row = {"model": model, "attribute": attr, "value": g, "class": c,
                           "n": int(sel.sum())}  # fmt: skip
                    for name, (k, m) in _class_counts(truth[sel], pred[sel], c).items():
                        lo, hi = wilson_interval(k, m, confidence=confidence)
                        row.update({name: k / m if m else np.nan, f"{name}_low": float(lo),
                                    f"{name}_high": float(hi)})  # fmt: skip
                    block.append(row)
                for name in ("tpr", "fpr"):
                    defined = [r[name] for r in block if not np.isnan(r[name])]
                    gap = max(defined) - min(defined) if len(defined) > 1 else np.nan
                    for r in block:
                        r[f"{name}_gap"] = gap
                rows.extend(block)
    return _typed(rows, _RATES_SCHEMA)


# ----------------------------------------------------------------------------------------------
# cell_quantiles

_QUANTILE_SCHEMA = {
    "model": "object",
    "cell": "object",
    "metric": "object",
    "n_valid": "int64",
    "q1": "float64",
    "median": "float64",
    "q3": "float64",
    "lower_fence": "float64",
    "upper_fence": "float64",
    "mean": "float64",
}


def cell_quantiles(
    samples: pd.DataFrame, *, groups: Sequence[str], label: str = "label", metrics: Sequence[str]
) -> pd.DataFrame:
    """Quartiles, Tukey whiskers and mean of each metric per model x cell (for box plots).

    The whiskers are the most extreme values within 1.5 IQR of the quartiles. Cells without a
    valid value are left out.

    Returns:
        DataFrame with columns ``model, cell, metric, n_valid, q1, median, q3, lower_fence,
        upper_fence, mean``.
    """
    groups = list(groups)
    cols = _metric_columns(metrics)
    _need(samples, ["model", label, *groups, *cols])
    rows: list[dict[str, Any]] = []
    for model, frame in samples.groupby("model", sort=False, observed=True):
        for cell, _, part in _cells(frame, [*groups, label]):
            for metric in cols:
                v = _metric_values(part, metric)
                v = v[~np.isnan(v)]
                if not len(v):
                    continue
                q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
                iqr = q3 - q1
                rows.append(
                    {"model": model, "cell": cell, "metric": metric, "n_valid": len(v), "q1": q1,
                     "median": med, "q3": q3, "lower_fence": v[v >= q1 - 1.5 * iqr].min(),
                     "upper_fence": v[v <= q3 + 1.5 * iqr].max(), "mean": v.mean()}
                )  # fmt: skip
    return _typed(rows, _QUANTILE_SCHEMA)


# ----------------------------------------------------------------------------------------------
# group_gaps

_GAPS_SCHEMA = {
    "model": "object",
    "metric": "object",
    "n_cells": "int64",
    "worst_cell": "object",
    "worst_value": "float64",
    "best_cell": "object",
    "best_value": "float64",
    "gap": "float64",
    "p_value": "float64",
}


def _range_permutation_p(
    values: np.ndarray,
    codes: np.ndarray,
    n_cells: int,
    observed: float,
    n_perm: int,
    seed: int,
    cache: dict[int, np.ndarray] | None = None,
) -> float:
    """P-value of max-minus-min of cell means under random reassignment of images to cells.

    ``cache`` keeps the (n_perm, n) permutation matrix of each n, so metrics with as many
    valid images share one draw; the draws are those of the uncached path, as both shuffle
    with a fresh ``default_rng(seed)``.
    """
    n = len(values)
    counts = np.bincount(codes, minlength=n_cells).astype(float)
    onehot = np.zeros((n, n_cells))
    onehot[np.arange(n), codes] = 1.0

    def exceeding(shuffled: np.ndarray) -> int:
        means = (shuffled @ onehot) / counts
        # A small tolerance keeps float noise from deciding ties with the observed statistic.
        return int((means.max(1) - means.min(1) >= observed - 1e-12).sum())

    if cache is not None and n_perm * n <= _CHUNK:
        if n not in cache:
            rng = np.random.default_rng(seed)
            cache[n] = rng.permuted(np.broadcast_to(np.arange(n), (n_perm, n)), axis=1)
        return (exceeding(values[cache[n]]) + 1) / (n_perm + 1)
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK // max(n, 1))
    exceed = 0
    for start in range(0, n_perm, step):
        b = min(n_perm, start + step) - start
        exceed += exceeding(rng.permuted(np.broadcast_to(values, (b, n)), axis=1))
    return (exceed + 1) / (n_perm + 1)


def group_gaps(
    samples: pd.DataFrame,
    *,
    groups: Sequence[str],
    label: str = "label",
    metrics: Sequence[str] = (),
    n_perm: int = 1000,
    seed: int = 0,
    min_group_size: int = 20,
) -> pd.DataFrame:
    """Largest gap between cells for each metric, with a permutation-test p-value.

    For each model and metric (``accuracy`` first, then ``metrics``), the cells (group
    attributes x label) with at least ``min_group_size`` non-NaN values are compared. The
    statistic is the largest minus the smallest cell mean; its p-value comes from ``n_perm``
    random reassignments of the pooled values to cells of the same sizes, as
    ``(1 + #{perm >= observed}) / (1 + n_perm)``. ``worst_cell`` has the lowest mean and
    ``best_cell`` the highest: for accuracy that is the worst group; for a metric where
    higher is worse (``mass:confounder``) read them the other way round.

    Args:
        samples: the samples table.
        groups: group attribute columns.
        label: the true-class column.
        metrics: metric columns besides ``accuracy``.
        n_perm: permutations.
        seed: permutation seed.
        min_group_size: cells with fewer valid values are left out.

    Returns:
        DataFrame with columns ``model, metric, n_cells, worst_cell, worst_value, best_cell,
        best_value, gap, p_value``. With fewer than 2 eligible cells, gap and p_value are NaN.
    """
    groups = list(groups)
    cols = _metric_columns(metrics)
    _check_min(min_group_size)
    if n_perm < 1:
        raise ConfigError(f"n_perm: expected a positive count, got {n_perm!r}")
    _need(samples, ["model", "correct", label, *groups, *cols])
    rows: list[dict[str, Any]] = []
    cache: dict[int, np.ndarray] = {}
    for model, frame in samples.groupby("model", sort=False, observed=True):
        parts = [(cell, part) for cell, _, part in _cells(frame, [*groups, label])]
        for metric in [ACCURACY, *cols]:
            names, chunks = [], []
            for cell, part in parts:
                v = _metric_values(part, metric)
                v = v[~np.isnan(v)]
                if len(v) >= max(min_group_size, 1):
                    names.append(cell)
                    chunks.append(v)
            row = {"model": model, "metric": metric, "n_cells": len(names)}
            if not names:
                rows.append(row)
                continue
            means = np.array([c.mean() for c in chunks])
            lo, hi = int(np.argmin(means)), int(np.argmax(means))
            row.update(
                worst_cell=names[lo], worst_value=means[lo], best_cell=names[hi],
                best_value=means[hi],
            )  # fmt: skip
            if len(names) >= 2:
                gap = float(means[hi] - means[lo])
                codes = np.repeat(np.arange(len(chunks)), [len(c) for c in chunks])
                p = _range_permutation_p(
                    np.concatenate(chunks), codes, len(chunks), gap, n_perm, seed, cache
                )
                row.update(gap=gap, p_value=p)
            rows.append(row)
    return _typed(rows, _GAPS_SCHEMA)


# ----------------------------------------------------------------------------------------------
# fairness_differences

_FAIRNESS_SCHEMA = {
    "model": "object",
    "attribute": "object",
    "metric": "object",
    "value": "float64",
}


def fairness_differences(
    samples: pd.DataFrame,
    *,
    groups: Sequence[str],
    label: str = "label",
    classes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Demographic-parity and equalized-odds differences across each group attribute.

    Computed with fairlearn, one class against the rest, and the largest value over classes is
    reported. For two classes both choices of positive class give the same value, so this is
    the usual binary figure. With more than one attribute, a row for their intersection
    (attribute named like a cell, ``"gender / age"``) is added.

    Args:
        samples: the samples table (``model``, ``label``, ``pred`` and the group columns).
        groups: group attribute columns.
        label: the true-class column.
        classes: class names; by default the sorted names seen in label/pred.

    Returns:
        DataFrame with columns ``model, attribute, metric, value``; metric is
        ``demographic_parity_difference`` or ``equalized_odds_difference``.
    """

    groups = list(groups)
    _need(samples, ["model", "pred", label, *groups])
    class_names = _classes(samples, label, classes)
    attributes: list[tuple[str, list[str]]] = [(g, [g]) for g in groups]
    if len(groups) > 1:
        attributes.append((cell_name(groups), groups))
    rows: list[dict[str, Any]] = []
    for model, frame in samples.groupby("model", sort=False, observed=True):
        truth = frame[label].astype(str).to_numpy()
        pred = frame["pred"].astype(str).to_numpy()
        for name, cols in attributes:
            sensitive = frame[cols].astype(str)
            for metric, fn in (
                ("demographic_parity_difference", demographic_parity_difference),
                ("equalized_odds_difference", equalized_odds_difference),
            ):
                values = []
                for c in class_names:
                    y, yhat = (truth == c).astype(int), (pred == c).astype(int)
                    if metric == "equalized_odds_difference" and (y.all() or not y.any()):
                        continue  # TPR or FPR undefined for every group
                    values.append(float(fn(y, yhat, sensitive_features=sensitive)))
                value = (
                    float(np.nanmax(values)) if values and not np.isnan(values).all() else np.nan
                )
                rows.append({"model": model, "attribute": name, "metric": metric, "value": value})
    return _typed(rows, _FAIRNESS_SCHEMA)


# ----------------------------------------------------------------------------------------------
# paired_comparison

_PAIRED_SCHEMA = {
    "model_a": "object",
    "model_b": "object",
    "cell": "object",
    "metric": "object",
    "n": "int64",
    "small": "bool",
    "mean_diff": "float64",
    "ci_low": "float64",
    "ci_high": "float64",
    "p_value": "float64",
    "share_expected_sign": "float64",
}


def _wilcoxon_p(diff: np.ndarray) -> float:
    if len(diff) < 2 or not np.any(diff != 0):
        return float("nan")
    try:
        return float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)
    except ValueError:
        return float("nan")


def paired_comparison(
    samples: pd.DataFrame,
    model_a: str,
    model_b: str,
    *,
    metrics: Sequence[str],
    groups: Sequence[str],
    label: str = "label",
    by_cell: bool = True,
    expected_sign: Mapping[str, int] | None = None,
    min_group_size: int = 20,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Two models on the same images: mean paired difference (a - b), CI and Wilcoxon test.

    Images are matched by ``id``; pairs where either value is NaN are dropped per metric.
    The interval is a percentile bootstrap of the mean difference (pairs resampled); the
    p-value is the two-sided Wilcoxon signed-rank test (zero differences dropped), NaN when
    every difference is zero or fewer than 2 pairs remain. ``share_expected_sign`` is the
    share of pairs whose difference has the expected sign: ``expected_sign[metric]`` (+1 or
    -1) if given, else the sign of ``mean_diff`` (NaN if that is 0).

    Args:
        samples: the samples table with rows of both models.
        model_a, model_b: model names.
        metrics: metric columns (``"accuracy"`` compares ``correct``).
        groups: group attribute columns defining the cells (with the label).
        label: the true-class column.
        by_cell: add one row per cell besides ``"all"``.
        expected_sign: metric -> +1/-1, the direction expected for a - b.
        min_group_size: rows with fewer pairs are ``small``: no interval, no p-value.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        confidence: coverage of the interval.

    Returns:
        DataFrame with columns ``model_a, model_b, cell, metric, n, small, mean_diff, ci_low,
        ci_high, p_value, share_expected_sign``.
    """
    groups = list(groups)
    cols = _metric_columns(metrics)
    metrics = list(metrics)
    _check_min(min_group_size)
    needed = ["model", "id", label, *groups, *cols]
    _need(samples, [*needed, "correct"] if ACCURACY in metrics else needed)
    expected = dict(expected_sign or {})
    for metric, s in expected.items():
        if s not in (1, -1):
            raise ConfigError(f"expected_sign.{metric}: expected +1 or -1, got {s!r}")
    frames = {}
    for name in (model_a, model_b):
        frame = samples[samples["model"] == name]
        if frame.empty:
            raise DataError(f"samples: no rows for model {name!r}")
        dup = frame["id"].duplicated()
        if dup.any():
            raise DataError(f"samples: model {name!r} has id {frame['id'][dup].iloc[0]!r} twice")
        frames[name] = frame.set_index("id")
    a, b = frames[model_a], frames[model_b]
    common = a.index.intersection(b.index, sort=False)
    a, b = a.loc[common], b.loc[common]

    parts = [(ALL_CELL, a.index)]
    if by_cell:
        parts += [(cell, part.index) for cell, _, part in _cells(a, [*groups, label])]
    rows: list[dict[str, Any]] = []
    for cell, index in parts:
        # The pooled cell is resampled within each group cell (a stratified paired bootstrap).
        fa, fb = a.loc[index], b.loc[index]
        strata = _strata(fa, [*groups, label]) if cell == ALL_CELL else None
        for metric in metrics:
            raw = _metric_values(fa, metric) - _metric_values(fb, metric)
            d = raw[~np.isnan(raw)]
            n = len(d)
            small = n < min_group_size
            mean = float(d.mean()) if n else np.nan
            low = high = p = np.nan
            if not small:
                low, high = bootstrap_ci(
                    raw, strata=strata, n_boot=n_boot, seed=seed, confidence=confidence
                )
                p = _wilcoxon_p(d)
            sign = expected.get(metric, np.sign(mean) if n else 0)
            share = float(np.mean(np.sign(d) == sign)) if n and sign != 0 else np.nan
            rows.append(
                {"model_a": model_a, "model_b": model_b, "cell": cell, "metric": metric, "n": n,
                 "small": small, "mean_diff": mean, "ci_low": low, "ci_high": high,
                 "p_value": p, "share_expected_sign": share}
            )  # fmt: skip
    return _typed(rows, _PAIRED_SCHEMA)
