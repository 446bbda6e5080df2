"""The gallery: a few maps per cell, chosen from the samples table and recomputed for the report."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from bias_audit.core._naming import CONFOUNDER, ROLES, cell_name, column
from bias_audit.core.maps import explain
from bias_audit.io.data import collate
from bias_audit.pipelines._plan import (
    _spec,
)
from bias_audit.pipelines._summary import _num

#: Longest side of the gallery's thumbnails, maps and masks.
GALLERY_SIZE = 96


def _cells(samples: pd.DataFrame, groups: Sequence[str]) -> pd.Series:
    keys = [*groups, "label"]
    return samples[keys].astype(str).apply(lambda r: cell_name(r.tolist()), axis=1)


def _gallery(samples, config, loaded, store, dev, layers) -> None:
    """Maps of a bounded, deterministic selection per cell, for the report's gallery.

    Per cell (of the first model's rows): the ``ceil(k/2)`` most confounder-reliant images by
    ``mass:confounder``, then a seeded random draw among the rest, ``k = gallery_per_cell``.
    """

    first = config.models[0].name
    rows = samples[samples["model"] == first].reset_index(drop=True)
    rows = rows.assign(_cell=_cells(rows, config.data.groups).to_numpy(), _pos=np.arange(len(rows)))
    k = config.report.gallery_per_cell
    rng = np.random.default_rng(config.stats.seed)
    conf = column("mass", CONFOUNDER)
    picks: list[tuple[str, int, str]] = []
    for cell, sub in rows.groupby("_cell", sort=True):
        ranked = sub[sub[conf].notna()] if conf in sub else sub.iloc[:0]
        top = ranked.sort_values([conf, "id"], ascending=[False, True]).head(math.ceil(k / 2))
        rest = sub[~sub["_pos"].isin(top["_pos"])].sort_values("id")
        n_rand = min(k - len(top), len(rest))
        rand = rest.iloc[np.sort(rng.choice(len(rest), size=n_rand, replace=False))]
        picks += [(cell, int(p), "confounder") for p in top["_pos"]]
        picks += [(cell, int(p), "random") for p in rand["_pos"]]
    if not picks:
        return
    arrays: dict[str, np.ndarray] = {}
    items: list[dict[str, Any]] = []
    keys = [f"g{i}" for i in range(len(picks))]
    regions: list[str] = []
    size: list[int] = []
    for m_i, (name, (model, ds, _plan_)) in enumerate(loaded.items()):
        by_id = {sid: i for i, sid in enumerate(ds.ids)}
        idx = [by_id[str(rows.at[p, "id"])] for _, p, _ in picks]
        spec = _spec(config, _plan_, ds)
        if spec.target_layer is None and layers.get(name, {}).get("target_layer"):
            spec = dataclasses.replace(spec, target_layer=layers[name]["target_layer"])
        mrows = samples[samples["model"] == name].set_index("id")
        for start in range(0, len(idx), config.data.batch_size):
            chunk = list(range(start, min(start + config.data.batch_size, len(idx))))
            batch = collate([ds[idx[j]] for j in chunk])
            targets = batch.labels.to(dev) if spec.target == "label" else None
            exp = explain(model, batch.images.to(dev), methods=config.explain.methods,
                          target_layer=spec.target_layer, targets=targets)  # fmt: skip
            small = _shrink(exp.maps[config.explain.methods[0]].detach().float().cpu())
            for j, m in zip(chunk, small, strict=True):
                arrays[f"map/{name}/{keys[j]}"] = m.numpy().astype(np.float16)
            # The other methods are kept for the gallery only: guided ones as (3, h, w) signed.
            for method in config.explain.methods[1:]:
                x = exp.maps[method].detach().float().cpu()
                lead = x.shape[:-2]
                x = _shrink(x.reshape(-1, *x.shape[-2:]))
                x = x.reshape(*lead, *x.shape[-2:])
                for j, m in zip(chunk, x, strict=True):
                    arrays[f"method/{method}/{name}/{keys[j]}"] = m.numpy().astype(np.float16)
            if m_i == 0:
                imgs = _denormalise(batch.images, ds.mean, ds.std)
                masks = _shrink(batch.masks.float().flatten(0, 1)).reshape(
                    len(chunk), len(batch.regions), *small.shape[-2:]) > 0.5  # fmt: skip
                regions, size = list(batch.regions), list(small.shape[-2:])
                for jj, j in enumerate(chunk):
                    arrays[f"image/{keys[j]}"] = imgs[jj]
                    arrays[f"masks/{keys[j]}"] = masks[jj].numpy()
        for j, (cell, p, reason) in enumerate(picks):
            if m_i == 0:
                r = rows.loc[p]
                items.append({"key": keys[j], "id": str(r["id"]), "cell": cell, "reason": reason,
                              "label": str(r["label"]), "models": {}})  # fmt: skip
            mr = mrows.loc[items[j]["id"]]
            items[j]["models"][name] = {
                "pred": str(mr["pred"]),
                "prob": float(mr["prob"]),
                "mass": {role: _num(mr.get(column("mass", role))) for role in ROLES},
            }
    store.write_npz("maps.npz", arrays)
    store.write_json(
        "gallery.json",
        {"regions": regions, "size": size, "methods": list(config.explain.methods),
         "items": items},
    )  # fmt: skip


def _shrink(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, h, w) with the longest side at most GALLERY_SIZE (area average)."""
    h, w = x.shape[-2:]
    scale = min(1.0, GALLERY_SIZE / max(h, w))
    if scale >= 1.0:
        return x
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return torch.nn.functional.interpolate(x[:, None], size=size, mode="area")[:, 0]


def _denormalise(images: torch.Tensor, mean, std) -> np.ndarray:
    x = images.float() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    n, c, h, w = x.shape
    small = _shrink(x.reshape(n * c, h, w)).reshape(n, c, *_shrink(x[:1, 0]).shape[-2:])
    return (small.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
