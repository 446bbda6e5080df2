from __future__ import annotations

import pandas as pd
import pytest
import torch

import bias_audit.data as data
from bias_audit.data import Batch, Sample, collate, load_manifest


def test_all_is_complete():
    public = {n for n in dir(data) if not n.startswith("_")} - {"annotations"}
    modules = {n for n in public if type(getattr(data, n)).__name__ == "module"}
    assert set(data.__all__) == public - modules


def test_load_basic(small_manifest):
    ds = load_manifest(small_manifest, groups=["gender"], image_size=16)
    assert len(ds) == 6
    assert ds.classes == ["doctor", "nurse"]
    assert ds.regions == ["coat", "hair"]
    assert ds.groups == ["gender"]
    assert list(ds.table.index) == [1, 2, 3, 4, 5, 6]
    assert ds.skipped.empty and list(ds.skipped.columns) == ["row", "column", "reason"]
    s = ds[3]
    assert isinstance(s, Sample)
    assert s.image.shape == (3, 16, 16) and s.image.dtype == torch.float32
    assert s.label == ds.classes.index("doctor")
    assert s.id == "img/3.png" and s.index == 3
    assert s.attrs == {"gender": "female"}
    assert s.present == {"coat": False, "hair": True}
    assert not s.masks["coat"].any() and s.masks["hair"].any()
    assert s.masks["hair"].dtype == torch.bool and s.masks["hair"].shape == (16, 16)


def test_collate(small_manifest):
    ds = load_manifest(small_manifest, groups=["gender"], image_size=16)
    samples = [ds[i] for i in range(len(ds))]
    b = collate(samples)
    assert isinstance(b, Batch) and len(b) == 6
    assert b.images.shape == (6, 3, 16, 16)
    assert b.masks.shape == (6, 2, 16, 16) and b.present.shape == (6, 2)
    assert b.regions == ("coat", "hair")
    assert b.labels.tolist() == [s.label for s in samples]
    assert b.index.tolist() == list(range(6))
    assert b.attrs == {"gender": [s.attrs["gender"] for s in samples]}
    for i, s in enumerate(samples):
        assert torch.equal(b.masks[i, 1], s.masks["hair"])
        assert b.present[i].tolist() == [s.present["coat"], s.present["hair"]]


def test_cells_match_groupby(small_manifest):
    ds = load_manifest(small_manifest, groups=["gender"], image_size=8, min_group_size=2)
    cells = ds.cells()
    assert list(cells.columns) == ["cell", "gender", "label", "n", "small"]
    direct = pd.read_csv(small_manifest).groupby(["gender", "label"]).size()
    for rec in cells.itertuples():
        assert rec.n == direct.get((rec.gender, rec.label), 0)
        assert rec.small == (rec.n < 2)
        assert rec.cell == f"{rec.gender} / {rec.label}"
    assert cells["n"].sum() == len(ds)
    assert len(cells) == 2 * 2
