"""A realistic run folder from random but seeded inputs, for the report tests.

The class rates, distributions and worst groups come from ``bias_audit.core.stats`` as the
audit writes them (those functions have their own oracle tests in tests/metrics).

Nothing here is a hard-coded result: the samples table is drawn at random, and the group,
gap, fairness and comparison tables are computed from it with plain pandas, the way the audit
writes them (docs/design.md, "The run folder").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from bias_audit.core.stats import cell_quantiles, class_rates, group_gaps, holm, worst_group

ROLES = ("causal", "confounder", "background")
REGIONS = ("coat", "face", "hair", "stethoscope")
ROLE_OF = {"coat": "causal", "stethoscope": "causal", "face": "confounder", "hair": "confounder"}
CLASSES = ("doctor", "nurse")
HOSTILE_GROUP = "<img src=x onerror=alert(1)>"
HOSTILE_MODEL = "debiased</script><script>alert(2)</script>"
MIN_GROUP_SIZE = 20
#: In the config's comments: the report drops it with ``redact``.
SECRET_COMMENT = "alice@ward.example"


def project_dir(run_dir: Path) -> Path:
    """The folder of the run's config: manifest and checkpoints live under it."""
    return Path(run_dir).resolve().parent / "project"


def _cells(genders: tuple[str, str]) -> list[tuple[str, str]]:
    return [(g, c) for g in genders for c in CLASSES]


def make_samples(
    *,
    n_per_cell: int,
    models: tuple[str, ...],
    genders: tuple[str, str],
    small: int | None,
    seed: int,
    methods: tuple[str, ...] = ("gradcam",),
) -> pd.DataFrame:
    """One row per model x image with every documented column, drawn at random.

    Methods after the first get their own localisation columns, ``<metric>:<name>@<method>``;
    occlusion does not depend on the map, so flips and drops have no suffix.
    """
    rng = np.random.default_rng(seed)
    cells = _cells(genders)
    sizes = [small if (small is not None and i == 3) else n_per_cell for i in range(len(cells))]
    cell_idx = np.repeat(np.arange(len(cells)), sizes)
    n = len(cell_idx)
    ids = np.array([f"img{i:05d}" for i in range(1, n + 1)])
    gender = np.array([cells[i][0] for i in cell_idx], dtype=object)
    label = np.array([cells[i][1] for i in cell_idx], dtype=object)
    other = np.where(label == CLASSES[0], CLASSES[1], CLASSES[0])
    area = {r: rng.uniform(0.02, 0.2, n) for r in REGIONS}
    area_role = {
        "causal": area["coat"] + area["stethoscope"],
        "confounder": area["face"] + area["hair"],
    }
    area_role["background"] = 1.0 - area_role["causal"] - area_role["confounder"]
    frames = []
    for mi, model in enumerate(models):
        # The first model is "biased": worse on the counter-stereotypical cells, more
        # attention on confounders.
        acc = np.where((mi == 0) & np.isin(cell_idx, (1, 2)), 0.65, 0.9)
        correct = rng.random(n) < acc
        pred = np.where(correct, label, other)
        cols: dict[str, object] = {
            "model": model,
            "id": ids,
            "label": label,
            "pred": pred,
            "correct": correct,
            "prob": rng.uniform(0.5, 1.0, n),
            "target": pred,
            "gender": gender,
        }
        conc = np.array([2.0, 6.0 if mi == 0 else 1.5, 2.0])
        mr = rng.dirichlet(conc, n)
        mass_role = {role: mr[:, k] for k, role in enumerate(ROLES)}
        for r in REGIONS:
            role = ROLE_OF[r]
            cols[f"area:{r}"] = area[r]
            cols[f"mass:{r}"] = mass_role[role] * area[r] / area_role[role]
        for role in ROLES:
            cols[f"area:{role}"] = area_role[role]
            cols[f"mass:{role}"] = mass_role[role]
        degenerate = rng.random(n) < 0.02  # all-zero maps: metrics NaN, as the audit writes
        for name in (*REGIONS, *ROLES):
            cols[f"mass:{name}"] = np.where(degenerate, np.nan, cols[f"mass:{name}"])
            cols[f"lift:{name}"] = cols[f"mass:{name}"] / cols[f"area:{name}"]
            cols[f"rank:{name}"] = np.where(degenerate, np.nan, rng.uniform(0, 1, n))
            cols[f"pointing:{name}"] = np.where(
                degenerate, np.nan, (rng.random(n) < cols[f"mass:{name}"]).astype(float)
            )
            cols[f"loc_iou:{name}"] = rng.uniform(0, 1, n)
        for method in methods[1:]:
            # Another method: the same tendency, drawn again, so its numbers differ.
            mr2 = rng.dirichlet(conc[::-1] if mi == 0 else conc, n)
            for k, role in enumerate(ROLES):
                cols[f"mass:{role}@{method}"] = mr2[:, k]
                cols[f"lift:{role}@{method}"] = mr2[:, k] / area_role[role]
            for r in REGIONS:
                role = ROLES.index(ROLE_OF[r])
                cols[f"mass:{r}@{method}"] = mr2[:, role] * area[r] / area_role[ROLE_OF[r]]
                cols[f"lift:{r}@{method}"] = cols[f"mass:{r}@{method}"] / area[r]
        for role in ROLES:
            cols[f"flip:{role}"] = (rng.random(n) < mass_role[role]).astype(float)
            cols[f"drop:{role}"] = rng.uniform(-0.1, 0.6, n) * mass_role[role]
            cols[f"flip_random:{role}"] = (rng.random(n) < 0.1).astype(float)
            cols[f"drop_random:{role}"] = rng.uniform(-0.05, 0.1, n)
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def cell_of(samples: pd.DataFrame) -> pd.Series:
    return samples["gender"].astype(str) + " / " + samples["label"].astype(str)


def group_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Tidy group_stats: mean +- 1.96 SE for metrics, Wilson for accuracy, no CI when small."""
    s = samples.assign(cell=cell_of(samples))
    metrics = [
        c
        for c in s.columns
        if c.split(":")[0] in ("mass", "lift", "flip", "drop", "flip_random", "drop_random")
    ]
    out = []
    for (model, cell), part in s.groupby(["model", "cell"], sort=False):
        n = len(part)
        small = n < MIN_GROUP_SIZE
        base = {
            "model": model,
            "cell": cell,
            "gender": part["gender"].iloc[0],
            "label": part["label"].iloc[0],
            "n": n,
            "small": small,
        }
        k = int(part["correct"].sum())
        ci = binomtest(k, n).proportion_ci(method="wilson")
        out.append(
            {
                **base,
                "metric": "accuracy",
                "value": k / n,
                "ci_low": np.nan if small else ci.low,
                "ci_high": np.nan if small else ci.high,
            }
        )
        for metric in metrics:
            v = part[metric].dropna()
            mean, se = v.mean(), v.std(ddof=1) / np.sqrt(max(len(v), 1))
            out.append(
                {
                    **base,
                    "metric": metric,
                    "value": mean,
                    "ci_low": np.nan if small else mean - 1.96 * se,
                    "ci_high": np.nan if small else mean + 1.96 * se,
                }
            )
    return pd.DataFrame(out)


def gap_table(samples: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Largest gap between cells, as the audit writes gaps.parquet (core.stats.group_gaps)."""
    frame = group_gaps(
        samples,
        groups=["gender"],
        metrics=["mass:confounder", "flip:confounder", "mass:causal"],
        n_perm=200,
        seed=seed,
        min_group_size=MIN_GROUP_SIZE,
    )
    frame["p_adjusted"] = holm(frame["p_value"].to_numpy())
    return frame


def fairness_table(samples: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for model, part in samples.groupby("model", sort=False):
        sel = (part["pred"] == CLASSES[0]).groupby(part["gender"]).mean()
        rows.append(
            {
                "model": model,
                "attribute": "gender",
                "metric": "demographic_parity_difference",
                "value": float(sel.max() - sel.min()),
            }
        )
    return pd.DataFrame(rows)


def comparison_table(samples: pd.DataFrame, models: tuple[str, ...]) -> pd.DataFrame:
    a = samples[samples["model"] == models[0]].set_index("id")
    b = samples[samples["model"] == models[1]].set_index("id")
    cells = cell_of(a.reset_index()).to_numpy()
    rows = []
    for role in ROLES:
        metric = f"mass:{role}"
        diff = (a[metric] - b[metric]).to_numpy()
        for cell in [None, *pd.unique(cells)]:
            d = diff if cell is None else diff[cells == cell]
            d = d[~np.isnan(d)]
            se = d.std(ddof=1) / np.sqrt(len(d))
            rows.append(
                {
                    "model_a": models[0],
                    "model_b": models[1],
                    "metric": metric,
                    "cell": cell,
                    "n": len(d),
                    "diff": d.mean(),
                    "ci_low": d.mean() - 1.96 * se,
                    "ci_high": d.mean() + 1.96 * se,
                    "p_value": float(min(1.0, 2 * np.exp(-abs(d.mean() / se)))),
                }
            )
    frame = pd.DataFrame(rows)
    frame["p_adjusted"] = holm(frame["p_value"].to_numpy())
    return frame


def findings(groups: pd.DataFrame, seed: int) -> list[dict]:
    """Per model: the cell with the most confounder mass; severity from its value."""
    out = []
    conf = groups[(groups["metric"] == "mass:confounder") & ~groups["small"]]
    for model, part in conf.groupby("model", sort=False):
        row = part.loc[part["value"].idxmax()]
        sev = "high" if row["value"] > 0.5 else "medium" if row["value"] > 0.3 else "low"
        out.append(
            {
                "rule": "confounder_attention",
                "kind": "risk",
                "severity": sev,
                "model": model,
                "cell": row["cell"],
                "metric": "mass:confounder",
                "value": row["value"],
                "ci_low": row["ci_low"],
                "ci_high": row["ci_high"],
                "p_value": 0.001,
                "p_adjusted": 0.004,
                "text": f"{model}: {row['value']:.0%} of attention on confounders in {row['cell']}",
            }
        )
    out.append(
        {
            "rule": "class_effect",
            "kind": "info",
            "severity": "info",
            "model": None,
            "cell": None,
            "metric": None,
            "value": None,
            "ci_low": None,
            "ci_high": None,
            "p_value": None,
            "p_adjusted": None,
            "text": "Nurses are harder than doctors for every model (a class effect).",
        }
    )
    rng = np.random.default_rng(seed)
    return [out[i] for i in rng.permutation(len(out))]


#: The gate's defaults (issue 12): name -> (label, limit, higher_is_worse).
GATE = {
    "max_confounder_mass": ("Attention on confounders", 0.30, True),
    "max_confounder_lift": ("Confounder lift", 2.0, True),
    "max_flip_excess": ("Flip rate above random patches", 0.10, True),
    "min_worst_group_accuracy": ("Worst-group accuracy", 0.80, False),
}
_SCORE_OF = {
    "max_confounder_mass": "confounder_mass",
    "max_confounder_lift": "confounder_lift",
    "max_flip_excess": "flip_excess",
    "min_worst_group_accuracy": "worst_group_accuracy",
}


def _mean_ci(values: pd.Series) -> dict:
    v = values.astype(float).dropna()
    mean, se = float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))
    return {"value": mean, "ci_low": mean - 1.96 * se, "ci_high": mean + 1.96 * se, "n": len(v)}


def scoreboard(samples: pd.DataFrame, worst: dict, top: dict) -> list[dict]:
    """The compact scoreboard, one entry per model, computed from the samples."""
    out = []
    for model, part in samples.groupby("model", sort=False):
        k, n = int(part["correct"].sum()), len(part)
        ci = binomtest(k, n).proportion_ci(method="wilson")
        w = worst.get(model)
        excess = part["flip:confounder"] - part["flip_random:confounder"]
        out.append(
            {
                "model": model,
                "accuracy": {"value": k / n, "ci_low": ci.low, "ci_high": ci.high, "n": n},
                "worst_group_accuracy": (
                    {k: w[k] for k in ("cell", "value", "ci_low", "ci_high", "n")} if w else None
                ),
                "confounder_mass": _mean_ci(part["mass:confounder"]),
                "confounder_lift": _mean_ci(part["lift:confounder"]),
                "flip_rate": _mean_ci(part["flip:confounder"]),
                "flip_rate_random": _mean_ci(part["flip_random:confounder"]),
                "flip_excess": _mean_ci(excess),
                "top_finding": (top.get(model) or {}).get("text"),
            }
        )
    return out


def _criterion_status(entry: dict | None, limit: float, higher_is_worse: bool) -> str:
    """The contract's rule: beyond the limit with the CI clear of it fails; point estimate
    beyond but the CI crossing is a concern; no data is its own status."""
    if not entry or entry.get("value") is None:
        return "no_data"
    sign = 1 if higher_is_worse else -1
    value, favourable = (
        sign * entry["value"],
        sign * entry["ci_low" if higher_is_worse else "ci_high"],
    )
    if value <= sign * limit:
        return "pass"
    return "fail" if favourable > sign * limit else "concern"


def verdicts(board: list[dict], top: dict, warnings: list[dict]) -> list[dict]:
    out = []
    for entry in board:
        criteria = []
        for name, (label, limit, worse) in GATE.items():
            score = entry[_SCORE_OF[name]]
            criteria.append(
                {
                    "name": name,
                    "label": label,
                    "value": score["value"] if score else None,
                    "limit": limit,
                    "ci_low": score["ci_low"] if score else None,
                    "ci_high": score["ci_high"] if score else None,
                    "n": score["n"] if score else None,
                    "status": _criterion_status(score, limit, worse),
                }
            )
        statuses = {c["status"] for c in criteria}
        status = (
            "fail" if statuses & {"fail", "no_data"} else "concern" if "concern" in statuses
            else "pass"
        )  # fmt: skip
        mass = entry["confounder_mass"]
        out.append(
            {
                "model": entry["model"],
                "status": status,
                "headline": (
                    f"{mass['value']:.0%} of attention on the confounders; occluding them "
                    f"flips {entry['flip_rate']['value']:.0%} of predictions (random patches "
                    f"{entry['flip_rate_random']['value']:.0%})."
                ),
                "criteria": criteria,
                "top_finding": top.get(entry["model"]),
                "caveats": [
                    w
                    for w in warnings
                    if w["code"] == "non_final_layer" and entry["model"] in w["text"]
                ]
                + [
                    {
                        "code": "trust_not_faithful",
                        "text": "Deleting the top 5% of pixels drops the probability no more "
                        "than random pixels.",
                        "link": "#trust",
                    }
                ][: int(len(out) == 0)],
            }
        )
    return out


def changes(board: list[dict]) -> list[dict]:
    """Each later model against the first, on the scoreboard's metrics, worded as changes."""
    lower_is_better = {"confounder_mass", "flip_rate"}
    first, out = board[0], []
    for other in board[1:]:
        for metric in ("accuracy", "confounder_mass", "flip_rate"):
            a, b = first[metric], other[metric]
            diff = b["value"] - a["value"]
            half = 1.96 * np.hypot(
                (a["ci_high"] - a["ci_low"]) / 3.92, (b["ci_high"] - b["ci_low"]) / 3.92
            )
            lo, hi = diff - half, diff + half
            good = -diff if metric in lower_is_better else diff
            direction = "same" if lo <= 0 <= hi else "better" if good > 0 else "worse"
            out.append(
                {
                    "model_a": first["model"],
                    "model_b": other["model"],
                    "metric": metric,
                    "cell": "all",
                    "diff": diff,
                    "ci_low": lo,
                    "ci_high": hi,
                    "p_value": 0.01 if direction != "same" else 0.4,
                    "direction": direction,
                    "text": (
                        f"{other['model']} vs {first['model']}: {metric} {diff:+.2f} "
                        f"[{lo:.2f}, {hi:.2f}]"
                    ),
                }
            )
    return out


def gallery(
    samples: pd.DataFrame,
    models: tuple[str, ...],
    *,
    per_cell: int,
    size: int,
    seed: int,
    methods: tuple[str, ...] = ("gradcam",),
) -> tuple[dict, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed + 2)
    first = samples[samples["model"] == models[0]].assign(cell=cell_of)
    items, arrays = [], {}
    yy, xx = np.mgrid[0:size, 0:size]
    for cell, part in first.groupby("cell", sort=False):
        top = part.nlargest(per_cell // 2, "mass:confounder")
        rest = part.drop(top.index)
        rand = rest.sample(min(len(rest), per_cell - len(top)), random_state=seed)
        for reason, chosen in (("confounder", top), ("random", rand)):
            for r in chosen.itertuples(index=False):
                key = f"g{len(items)}"
                masks = np.zeros((len(REGIONS), size, size), dtype=bool)
                for ri in range(len(REGIONS)):
                    x0, y0 = rng.integers(0, size // 2, size=2)
                    w, h = rng.integers(size // 6, size // 2, size=2)
                    masks[ri, y0 : y0 + h, x0 : x0 + w] = True
                arrays[f"image/{key}"] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                arrays[f"masks/{key}"] = masks
                entry = {
                    "key": key,
                    "id": r.id,
                    "cell": cell,
                    "reason": reason,
                    "label": r.label,
                    "models": {},
                }
                for model in models:
                    row = samples[(samples["model"] == model) & (samples["id"] == r.id)].iloc[0]
                    cy, cx = rng.uniform(0, size, size=2)
                    bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 5) ** 2))
                    arrays[f"map/{model}/{key}"] = (3.0 * bump).astype(np.float16)
                    for method in methods[1:]:
                        arrays[f"map/{model}/{key}@{method}"] = (2.0 * bump.T).astype(np.float16)
                    entry["models"][model] = {
                        "pred": row["pred"],
                        "prob": row["prob"],
                        "mass": {role: row[f"mass:{role}"] for role in ROLES},
                    }
                items.append(entry)
    gal = {"regions": list(REGIONS), "size": [size, size], "items": items, "methods": list(methods)}
    return gal, arrays


def _nan_to_none(obj):
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, (np.floating,)):
        return _nan_to_none(float(obj))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def make_run_folder(
    path: Path,
    *,
    n_per_cell: int = 30,
    small: int | None = 12,
    models: tuple[str, ...] = ("biased", "debiased"),
    hostile: bool = False,
    gallery_per_cell: int = 8,
    image_size: int = 64,
    seed: int = 0,
    optional: bool = True,
    methods: tuple[str, ...] = ("gradcam", "gradcam++"),
) -> Path:
    """Write a run folder at ``path`` and return it.

    ``hostile`` puts HTML/script in a group value, a model name, the title and the config.
    ``optional=False`` writes only the required files (summary.json, samples.parquet).

    Paths are absolute, as the audit writes them, under a project folder next to ``path``
    (:func:`project_dir`) that holds the config; the config has comments with a path in them.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    project = project_dir(path)
    genders = ("female", HOSTILE_GROUP if hostile else "male")
    if hostile:
        models = (models[0], HOSTILE_MODEL, *models[2:])
    samples = make_samples(
        n_per_cell=n_per_cell,
        models=models,
        genders=genders,
        small=small,
        seed=seed,
        methods=methods,
    )
    groups = group_table(samples)
    worst = {
        r["model"]: {k: r[k] for k in ("cell", "n", "value", "ci_low", "ci_high", "overall")}
        for r in worst_group(groups.assign(n_valid=groups["n"])).to_dict("records")
        if r["n_cells"]
    }
    title = "Nurse / doctor audit" + (" <script>alert(3)</script>" if hostile else "")
    config = (
        f"# audit of the ward study, contact {SECRET_COMMENT}\n"
        f'title = "{title}"\n[data]\nmanifest = "data/manifest.csv"  # {project}\n'
        'groups = ["gender"]\n'
    )
    first = samples[samples["model"] == models[0]]
    cells = [
        {"cell": c, "gender": g, "label": lab, "n": int(n), "small": bool(n < MIN_GROUP_SIZE)}
        for (c, g, lab), n in first.assign(cell=cell_of)
        .groupby(["cell", "gender", "label"], sort=False)
        .size()
        .items()
    ]
    top = {}
    for f in findings(groups, seed):
        if f.get("kind") == "risk" and f["model"] not in top:
            top[f["model"]] = {k: f[k] for k in ("rule", "severity", "text")}
    warns = [
        {
            "code": "non_final_layer",
            "text": "Target layer layer3 is not the last spatial layer (layer4) of "
            f"{models[0]}: its maps may miss what the model finally relies on.",
        },
        {
            "code": "resized",
            "text": f"Images of 96 px in {project / 'data'} were resized to 224 px (2.3x).",
        },
    ]
    board = scoreboard(samples, worst, top)
    summary = {
        "verdicts": verdicts(board, top, warns),
        "scoreboard": board,
        "changes": changes(board) if len(models) > 1 else [],
        "warnings": warns,
        "methods": list(methods),
        "title": title,
        "created": "2026-01-02T03:04:05Z",
        "config": config,
        "data": {
            "manifest": str(project / "data" / "manifest.csv"),
            "n": int(len(first)),
            "fingerprint": "sha256:" + "ab" * 32,
            "groups": ["gender"],
            "label": "label",
            "classes": list(CLASSES),
            "regions": list(REGIONS),
            "roles": {"causal": ["coat", "stethoscope"], "confounder": ["face", "hair"]},
            "cells": cells,
            "skipped": 2 if optional else 0,
        },
        "models": [
            {
                "name": m,
                "arch": "resnet18",
                "checkpoint": str(project / "models" / f"{m}.pt"),
                "sha256": f"{i:02d}" * 32,
                "classes": list(CLASSES),
                "target_layer": "layer4",
                "layer_shape": [2, 2],
                "nan_maps": 0,
                "worst_group": worst.get(m),
            }
            for i, m in enumerate(models)
        ],
        "explain": {"methods": list(methods), "target": "predicted"},
        "stats": {"min_group_size": MIN_GROUP_SIZE, "bootstrap": 1000, "seed": seed},
        "findings": findings(groups, seed),
        "provenance": {
            "bias_audit": "0.1.0",
            "torch": "2.14.1",
            "torchvision": "0.29.1",
            "python": "3.11",
            "seed": seed,
            "device": "cpu",
        },
        "timings": {"total_s": 12.3, "per_model_s": {m: 5.0 + i for i, m in enumerate(models)}},
    }
    (path / "summary.json").write_text(json.dumps(_nan_to_none(summary), indent=2))
    samples.to_parquet(path / "samples.parquet", index=False)
    if not optional:
        return path
    (path / "config.toml").write_text(config)
    groups.to_parquet(path / "groups.parquet", index=False)
    gap_table(samples, seed).to_parquet(path / "gaps.parquet", index=False)
    fairness_table(samples).to_parquet(path / "fairness.parquet", index=False)
    class_rates(samples, groups=["gender"]).to_parquet(path / "rates.parquet", index=False)
    cell_quantiles(samples, groups=["gender"], metrics=["mass:confounder"]).to_parquet(
        path / "distributions.parquet", index=False
    )
    if len(models) > 1:
        comparison_table(samples, models).to_parquet(path / "comparisons.parquet", index=False)
    pd.DataFrame(
        {
            "row": [3, 17],
            "column": ["mask:hair", "image"],
            "path": [str(project / "data" / "masks" / "h3.png"), str(project / "img17.png")],
            "reason": ["file not found", "cannot decode"],
        }
    ).to_parquet(path / "skipped.parquet", index=False)
    gal, arrays = gallery(
        samples, models, per_cell=gallery_per_cell, size=image_size, seed=seed, methods=methods
    )
    (path / "gallery.json").write_text(json.dumps(_nan_to_none(gal)))
    np.savez(path / "maps.npz", **arrays)
    return path
