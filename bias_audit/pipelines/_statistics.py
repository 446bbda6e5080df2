"""The audit's statistics: the tables every later step reads (groups, gaps, comparisons, ...)."""

from __future__ import annotations

import dataclasses
from itertools import combinations

import numpy as np
import pandas as pd

from bias_audit.core._naming import CONFOUNDER, ROLES, column
from bias_audit.core.config import AuditConfig
from bias_audit.core.findings import Finding
from bias_audit.core.stats import (
    cell_quantiles,
    class_rates,
    fairness_differences,
    group_gaps,
    group_stats,
    holm,
    paired_comparison,
    worst_group,
)

#: Per-region occlusion columns summarised per cell when ``[interventions] regions`` asks for them.
OCCLUSION_METRICS = ("flip", "drop", "flip_random")


#: Sample columns summarised per cell (when present); per-region masses and occlusion are added.
STAT_METRICS = (
    *(column("mass", r) for r in ROLES),
    column("lift", CONFOUNDER),
    # the confounder regions' share of the image, for the lift a finding states
    column("area", CONFOUNDER),
    column("pointing", "causal"),
    column("pointing", CONFOUNDER),
    *(column(k, r) for k in OCCLUSION_METRICS for r in ("causal", CONFOUNDER)),
)


#: Sample columns whose per-cell distribution (quartiles, whiskers) the report draws.
DISTRIBUTION_METRICS = (column("mass", CONFOUNDER),)


#: Tables of the statistics step, each written as ``<name>.parquet``.
STAT_TABLES = ("groups", "gaps", "fairness", "comparisons", "worst_group", "rates", "distributions")


#: Sample columns tested for gaps between cells and for differences between models.
TESTED_METRICS = (column("mass", CONFOUNDER), column("mass", "causal"), column("flip", CONFOUNDER))


def _statistics(samples: pd.DataFrame, config: AuditConfig, regions) -> dict[str, pd.DataFrame]:
    """Group statistics, worst groups, class rates, distributions, gaps, fairness differences
    and paired comparisons (raw p-values): every number the findings and the report show."""

    st, groups = config.stats, list(config.data.groups)
    have = set(samples.columns)
    per_region = [column(k, r) for r in regions for k in ("mass", *OCCLUSION_METRICS)]
    summarised = [m for m in (*STAT_METRICS, *per_region) if m in have]
    tested = [m for m in TESTED_METRICS if m in have]
    classes = sorted(set(samples["label"]) | set(samples["pred"]))
    common = {"groups": groups, "min_group_size": st.min_group_size, "seed": st.seed}
    tables = {
        "groups": group_stats(
            samples, metrics=summarised, classes=classes, n_boot=st.bootstrap, **common
        ),  # fmt: skip
        "gaps": group_gaps(samples, metrics=tested, n_perm=max(1, st.permutations), **common),
        "fairness": fairness_differences(samples, groups=groups, classes=classes),
        "rates": class_rates(samples, groups=groups, classes=classes),
        "distributions": cell_quantiles(
            samples, groups=groups, metrics=[m for m in DISTRIBUTION_METRICS if m in have]
        ),
    }
    tables["worst_group"] = worst_group(tables["groups"])
    models = list(dict.fromkeys(samples["model"]))
    pairs = [
        paired_comparison(
            samples, a, b, metrics=["accuracy", *tested], n_boot=st.bootstrap, **common
        )  # fmt: skip
        for a, b in combinations(models, 2)
    ]
    tables["comparisons"] = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(
        columns=["model_a", "model_b", "cell", "metric", "n", "small", "mean_diff", "ci_low",
                 "ci_high", "p_value", "share_expected_sign"])  # fmt: skip
    return tables


def _holm_all(tables: dict[str, pd.DataFrame], drafts: list[Finding]) -> list[Finding]:
    """One Holm correction over every p-value of the audit: gaps, comparisons and findings.

    Adds ``p_adjusted`` to the tables in place and returns the drafts with theirs."""
    drafts = list(drafts)
    pieces: list[tuple[str, int | None, float]] = []
    for name in ("gaps", "comparisons", "fairness"):
        t = tables[name]
        if "p_value" in t.columns:
            pieces.extend((name, i, float(p)) for i, p in enumerate(t["p_value"]))
    own = [i for i, d in enumerate(drafts) if d.source is None]
    pieces.extend(("draft", i, float(drafts[i].p_value)) for i in own)
    p = np.array([x[2] for x in pieces], dtype=float)
    adj = np.asarray(holm(p), dtype=float)
    for name in ("gaps", "comparisons", "fairness"):
        if "p_value" in tables[name].columns:
            tables[name] = tables[name].assign(p_adjusted=np.nan)
    for (name, i, _), a in zip(pieces, adj, strict=True):
        if name == "draft":
            drafts[i] = dataclasses.replace(drafts[i], p_adjusted=float(a))
        else:
            tables[name].iloc[i, tables[name].columns.get_loc("p_adjusted")] = a
    # Findings that restate a gap or a comparison take that row's adjusted p-value.
    for i, d in enumerate(drafts):
        if d.source is not None:
            table, row = d.source
            drafts[i] = dataclasses.replace(
                d, p_adjusted=float(tables[table]["p_adjusted"].iloc[row])
            )
    return drafts
