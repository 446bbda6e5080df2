"""The discovery phase: cluster each model's maps and features per predicted class, score the
clusters by occlusion, and write ``discovery.parquet`` / ``discovery.json``.

Its inputs come from the streaming pass: each batch's part holds the downsampled maps and the
classifier head's input (``discovery:map``, ``discovery:features``, float16), so they resume
with the part and come back from a Ray actor with the rows; no second pass over the data. Only
the occlusion scoring reads images again, at most ``max_occluded`` members and as many controls
per cluster. Memory: ``map_size``² float16 values and one feature vector per image.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bias_audit.core.config import AuditConfig
from bias_audit.core.discovery import (
    FlagRule,
    attribute_enrichment,
    consistency,
    flag_cluster,
    flip_excess,
    grow_region,
    hot_region,
    merge_by_region,
    spectral_clusters,
    top_cells,
)
from bias_audit.core.metrics import occlusion_effect
from bias_audit.io.data import collate
from bias_audit.pipelines._step import DISCOVERY_FEATURES, DISCOVERY_MAP

__all__ = ["CLUSTER", "FEATURE_CLUSTER", "discover"]

#: Samples columns: the image's map cluster and feature cluster within its predicted class.
CLUSTER = "cluster"
FEATURE_CLUSTER = "feature_cluster"
#: Members shown per cluster in the report.
TYPICAL = 4


def _arrays(rows: pd.DataFrame, classes, size: int):
    """(small maps (N, s, s) float16, ok (N,), features (N, D) float32 or None, preds (N,))
    from the ``discovery:*`` columns the streaming step wrote, rows in dataset order."""
    maps = np.frombuffer(b"".join(rows[DISCOVERY_MAP].tolist()), dtype=np.float16)
    small = torch.from_numpy(maps.reshape(len(rows), size, size).copy())
    ok = small.float().flatten(1).sum(dim=1) > 0  # a map without mass is stored as zeros
    blobs = rows[DISCOVERY_FEATURES].tolist()
    features = None
    if blobs and all(len(b) == len(blobs[0]) > 0 for b in blobs):
        flat = np.frombuffer(b"".join(blobs), dtype=np.float16).astype(np.float32)
        features = flat.reshape(len(rows), -1)
    index = {c: i for i, c in enumerate(classes)}
    preds = torch.tensor([index[p] for p in rows["pred"]], dtype=torch.long)
    return small, ok, features, preds


def _occlude(model, ds, idx, region, target, config, dev, *, baseline: bool):
    """Flip rates (mask, random same-area patch) of occluding ``region`` in images ``idx``;
    ``region`` is (h, w) for all of them or (len(idx), h, w), one per image."""
    if len(idx) == 0:
        return math.nan, math.nan
    flips, randoms = [], []
    step = config.data.batch_size
    for s in range(0, len(idx), step):
        batch = collate([ds[int(i)] for i in idx[s : s + step]])
        images = batch.images.to(dev)
        cells = region[None] if region.ndim == 2 else region[s : s + step]
        mask = F.interpolate(cells[:, None].float(), size=images.shape[-2:], mode="nearest")
        masks = mask.bool().expand(len(images), 1, *images.shape[-2:]).contiguous()
        targets = torch.full((len(images),), target, dtype=torch.long)
        occ = occlusion_effect(
            model,
            images,
            masks.to(dev),
            targets,
            fill=config.discovery.fill,
            baseline=baseline,
            seed=config.stats.seed,
        )
        flips.append(occ.flip[:, 0].cpu())
        randoms.append(occ.flip_random[:, 0].cpu())
    return float(torch.cat(flips).nanmean()), float(torch.cat(randoms).nanmean())


def _sample(idx: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return idx if len(idx) <= k else np.sort(rng.choice(idx, size=k, replace=False))


def _text(entry: dict[str, Any]) -> str:
    where = f"{entry['model']}: cluster {entry['cluster']} ({entry['size']} images predicted "
    where += f"{entry['class']!r}, accuracy {entry['accuracy']:.0%}"
    if entry.get("merged_from"):
        where += f"; its {entry['merged_from']} map clusters scored as one, none stood out alone"
    where += ")"
    top = max(entry["enrichment"], key=lambda e: e["ratio"], default=None)
    enriched = ""
    if top is not None and top["ratio"] >= 1.5:
        enriched = (
            f"; {top['share']:.0%} of its members have {top['attribute']} = {top['value']!r} "
            f"against {top['class_share']:.0%} of {entry['enrichment_over']} ({top['ratio']:.1f}x)"
        )
    if entry["flagged"]:
        return (
            f"{where} is a candidate shortcut: occluding its common hot region "
            f"({entry['hot_area']:.0%} of the image) flips {entry['flip']:.0%} of its members, "
            f"against {entry['flip_random']:.0%} for a random region of the same area, "
            f"{_rate(entry['flip_place'])} for the same region in the {entry['control']} and "
            f"{_rate(entry['flip_own'])} for their own hottest cells{enriched}."
        )
    return f"{where}: not flagged ({'; '.join(entry['reasons'])}){enriched}."


def _rate(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _score_class(
    model,
    ds,
    config,
    dev,
    *,
    name,
    cls,
    c,
    idx,
    others,
    small,
    ok,
    labels_ok,
    attrs,
    ids,
    view,
    x,
    clock,
    grow,
) -> tuple[list[dict], np.ndarray]:
    """Cluster one class in one view and score each cluster; (entries, labels over idx).

    ``others``: images predicted as another class, the second control of the occlusion (the
    flip counts a change of prediction, whatever the class, so one target serves all).
    """
    d = config.discovery
    rule = FlagRule(
        min_cluster_size=d.min_cluster_size,
        min_eigengap=d.min_eigengap,
        min_consistency=d.min_consistency,
        min_flip_excess=d.min_flip_excess,
        min_enrichment=d.min_enrichment,
    )
    use = idx[ok[idx]] if view == "map" else idx
    labels = np.full(len(idx), -1, dtype=int)
    if len(use) == 0:
        return [], labels
    t0 = time.perf_counter()
    clustering = spectral_clusters(
        x[use], max_clusters=d.max_clusters, n_neighbors=d.neighbors, seed=config.stats.seed
    )
    clock["cluster_s"] += time.perf_counter() - t0

    def regions(found: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for k in range(int(found.max()) + 1):
            mean = small[use[found == k]].float().mean(dim=0)
            out.append((mean, hot_region(mean, mass=d.hot_mass, min_area=d.min_hot_area)))
        return out

    found = clustering.labels
    if view == "map":
        # Map clusters are places: two with one hot region are one strategy. Feature clusters
        # are not (a colour, a texture), so the same hot region does not make them one.
        found = merge_by_region(found, [r for _, r in regions(found)], iou=d.merge_iou)
    pos = {int(i): j for j, i in enumerate(idx)}
    class_attrs = {a: [attrs[a][i] for i in use] for a in attrs}

    def score(found: np.ndarray, merged: int) -> list[dict]:
        rng = np.random.default_rng(config.stats.seed)
        entries = []
        for k, (mean, hot) in enumerate(regions(found)):
            members = use[found == k]
            rest = use[found != k]
            region = grow_region(hot, cells=grow)
            if len(rest):
                over, enriched = "the class", attribute_enrichment(found == k, class_attrs)
            else:
                # The whole class: against itself nothing is enriched; compare with all images.
                everyone = np.isin(np.arange(len(ids)), members)
                over, enriched = "all images", attribute_enrichment(everyone, attrs)
            enrichment = [asdict(e) for e in enriched]
            cons = consistency(small[members].float(), hot)
            t0 = time.perf_counter()
            sample = _sample(members, d.max_occluded, rng)
            flip, flip_random = _occlude(model, ds, sample, region, c, config, dev, baseline=True)
            # the controls come from the rest of the class, or the other classes for a
            # whole-class cluster; see flip_excess
            control = _sample(rest if len(rest) else others, d.max_occluded, rng)
            flip_place, _ = _occlude(model, ds, control, region, c, config, dev, baseline=False)
            own = top_cells(small[control].float(), int(region.sum()))
            flip_own, _ = _occlude(model, ds, control, own, c, config, dev, baseline=False)
            clock["occlusion_s"] += time.perf_counter() - t0
            excess = flip_excess(flip, flip_random, flip_place, flip_own)
            flagged, reasons = flag_cluster(
                size=len(members),
                eigengap=clustering.eigengap,
                consistency=cons,
                excess=excess,
                rule=rule,
                whole_class=not len(rest),
                enrichment=max((e.ratio for e in enriched), default=None) if attrs else None,
            )
            dist = (small[members].float() - mean).flatten(1).norm(dim=1)
            typical = [ids[int(members[j])] for j in torch.argsort(dist, stable=True)[:TYPICAL]]
            tag = f"{cls}/{k}" if view == "map" else f"{cls}/f{k}"
            entry = {
                "model": name,
                "class": cls,
                "view": view,
                "cluster": tag,
                "size": int(len(members)),
                "class_size": int(len(use)),
                "accuracy": float(np.mean(labels_ok[members])),
                "n_clusters": int(found.max()) + 1,
                "merged_from": int(merged),
                "n_spectral": clustering.n_clusters,
                "eigengap": _f(clustering.eigengap),
                "consistency": _f(cons),
                "hot_area": float(region.float().mean()),
                "flip": _f(flip),
                "flip_random": _f(flip_random),
                "control": "rest of the class" if len(rest) else "other classes",
                "flip_place": _f(flip_place),
                "flip_own": _f(flip_own),
                "intervention_score": _f(excess),
                "flagged": bool(flagged),
                "reasons": list(reasons),
                "enrichment": enrichment,
                "enrichment_over": over,
                "typical": typical,
                "mean_map": [[round(float(v), 6) for v in row] for row in mean.tolist()],
            }
            entry["text"] = _text(entry)
            entries.append(entry)
        return entries

    entries = score(found, merged=0)
    if view == "map" and len(entries) > 1 and not any(e["flagged"] for e in entries):
        everyone = np.isin(np.arange(len(ids)), use)
        ratio = max((e.ratio for e in attribute_enrichment(everyone, attrs)), default=0.0)
        if ratio >= rule.min_enrichment:
            # The class is predicted for one group value far more often than the data holds
            # it, and no cut of it stands out: a shortcut deciding the whole class (a gender
            # cue for "nurse") is what every cluster of it needs, so each one's controls (the
            # rest of the class) flip as well. Score the class whole, against the other
            # classes, as a class that is one cluster is scored.
            merged = len(entries)
            found = np.zeros_like(found)
            entries = score(found, merged=merged)
    labels[[pos[int(i)] for i in use]] = found
    return entries, labels


def _half_cell(map_size: int, layer_side: int) -> int:
    """Half a layer cell in cells of the ``map_size`` grid, rounded up; 0 when the layer is as
    fine as the grid."""
    if layer_side >= map_size:
        return 0
    return math.ceil(map_size / max(layer_side, 1) / 2 - 1e-9)


def _f(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def discover(config: AuditConfig, loaded, samples: pd.DataFrame, collected, store, dev, layers):
    """Run discovery for every model.

    Args:
        config: the audit config (its ``[discovery]`` section).
        loaded: model name -> (model, dataset, plan), as the run loop holds them.
        samples: the samples table (``model``, ``id``, ``label``, ``pred``, groups).
        collected: ``model``, ``id``, ``pred`` and the ``discovery:*`` columns of the parts.
        layers: model name -> {"layer_shape": [h, w], ...} of the explain pass: the occluded
            region grows by half a layer cell (see ``grow_region``).
        store: the run's RunStore; ``discovery.parquet`` and ``discovery.json`` are written.
        dev: the device.

    Returns:
        ``(entries, clusters)``: one dict per cluster for ``summary["discovery"]`` (without
        the mean maps, which stay in ``discovery.json``), and a table (model, id, cluster,
        feature_cluster) to merge into the samples.
    """
    entries: list[dict[str, Any]] = []
    tables = []
    clock = {"cluster_s": 0.0, "occlusion_s": 0.0}
    for name, (model, ds, _plan) in loaded.items():
        mine = collected[collected["model"] == name].set_index("id").loc[list(ds.ids)]
        small, ok, features, preds = _arrays(mine, ds.classes, config.discovery.map_size)
        shape = layers.get(name, {}).get("layer_shape") or [config.discovery.map_size]
        grow = _half_cell(config.discovery.map_size, min(int(v) for v in shape[-2:]))
        ok_np = ok.numpy()
        rows = samples[samples["model"] == name].set_index("id").loc[list(ds.ids)]
        correct = rows["correct"].to_numpy(bool)
        attrs = {g: rows[g].tolist() for g in config.data.groups}
        ids = list(ds.ids)
        x_map = small.float().flatten(1).numpy()
        x_feat = None
        if features is not None:
            x_feat = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        cl_map = np.full(len(ids), None, dtype=object)
        cl_feat = np.full(len(ids), None, dtype=object)
        classes = list(ds.classes)
        for c, cls in enumerate(classes):
            idx = np.flatnonzero(preds.numpy() == c)
            views = [("map", x_map, cl_map)] + (
                [("feature", x_feat, cl_feat)] if x_feat is not None else []
            )
            for view, x, out in views:
                got, labels = _score_class(
                    model,
                    ds,
                    config,
                    dev,
                    name=name,
                    cls=cls,
                    c=c,
                    idx=idx,
                    others=np.flatnonzero(preds.numpy() != c),
                    small=small,
                    ok=ok_np,
                    labels_ok=correct,
                    attrs=attrs,
                    ids=ids,
                    view=view,
                    x=x,
                    clock=clock,
                    grow=grow,
                )
                entries.extend(got)
                prefix = "" if view == "map" else "f"
                for i, lab in zip(idx, labels, strict=True):
                    if lab >= 0:
                        out[i] = f"{cls}/{prefix}{lab}"
        tables.append(
            pd.DataFrame({"model": name, "id": ids, CLUSTER: cl_map, FEATURE_CLUSTER: cl_feat})
        )
    clusters = pd.concat(tables, ignore_index=True)
    # maps before features, flagged first, then the biggest intervention score
    entries.sort(
        key=lambda e: (
            e["model"],
            e["class"],
            e["view"] != "map",
            not e["flagged"],
            -(e["intervention_score"] if e["intervention_score"] is not None else -math.inf),
        )
    )
    slices = error_slices(
        samples.merge(clusters, on=["model", "id"], how="left"),
        groups=config.data.groups,
        min_size=config.discovery.min_cluster_size,
    )
    store.write_table("discovery.parquet", clusters)
    store.write_json(
        "discovery.json", {"clusters": entries, "error_slices": slices, "timings": clock}
    )
    summary = [{k: v for k, v in e.items() if k != "mean_map"} for e in entries]
    return summary, slices, clusters


def error_slices(samples: pd.DataFrame, *, groups, min_size: int) -> list[dict[str, Any]]:
    """Slices of one true class where errors concentrate: the images of label L that share an
    attribute value or a (map or feature) cluster. Listed when the slice holds at least
    ``min_size`` images and at least ``min_size // 2`` errors and its accuracy is below the
    label's; worst accuracy first."""
    out = []
    keys = [*groups, *(c for c in (CLUSTER, FEATURE_CLUSTER) if c in samples)]
    for (model, label), part in samples.groupby(["model", "label"], sort=True):
        base = float(part["correct"].mean())
        for key in keys:
            for value, sl in part.groupby(key, sort=True, dropna=True):
                errors = int((~sl["correct"].astype(bool)).sum())
                acc = float(sl["correct"].mean())
                if len(sl) >= min_size and errors >= max(1, min_size // 2) and acc < base:
                    out.append(
                        {
                            "model": model,
                            "label": label,
                            "by": key,
                            "value": str(value),
                            "size": int(len(sl)),
                            "errors": errors,
                            "accuracy": acc,
                            "label_accuracy": base,
                        }
                    )
    out.sort(key=lambda s: (s["model"], s["accuracy"], -s["size"]))
    return out


def annotation_warnings(config: AuditConfig, regions) -> list[dict[str, str]]:
    """``summary["warnings"]`` entries ({code, text}) for the sections that need region
    annotations when the audit has none: with no roles, attention mass, pointing and the
    role occlusions are NaN, and the findings that rest on them are not drawn."""
    if config.regions.causal or config.regions.confounder:
        return []
    has = f"the manifest has regions {list(regions)} but " if regions else ""
    return [
        {
            "code": "no_regions",
            "text": (
                f"No region roles: {has}no causal or confounder regions are set, so attention "
                "mass, pointing, localisation and the role occlusions are not measured (their "
                "columns are NaN) and no attention finding is drawn. Predictions, group "
                "statistics and discovered strategies do not need annotations."
            ),
        }
    ]
