"""COCO polygons and RLE against masks drawn by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bias_audit.errors import DataError
from bias_audit.io.data import load_manifest, regions_from_coco, write_coco_masks

H, W = 10, 12


def _rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE, written from its definition: run lengths of the column-major
    flattening, starting with a (possibly empty) run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return counts


@pytest.fixture
def coco():
    from pycocotools import mask as mask_utils

    blob = np.zeros((H, W), dtype=bool)
    blob[1:4, 7:11] = True
    blob[6, 0] = True
    compressed = np.zeros((H, W), dtype=bool)
    compressed[8:10, 3:9] = True
    rle = mask_utils.encode(np.asfortranarray(compressed.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": H, "width": W},
            {"id": 2, "file_name": "sub/b.png", "height": H, "width": W},
        ],
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 2, "name": "tie"},
            {"id": 3, "name": "dog"},
        ],
        "annotations": [
            # polygon: the rectangle (2, 2)-(6, 5) covers x in [2, 6), y in [2, 5)
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 6, 2, 6, 5, 2, 5]]},
            {"id": 11, "image_id": 1, "category_id": 1,
             "segmentation": {"size": [H, W], "counts": _rle_counts(blob)}, "iscrowd": 1},
            {"id": 12, "image_id": 1, "category_id": 2, "segmentation": rle},
            {"id": 13, "image_id": 2, "category_id": 3, "segmentation": [[0, 0, 3, 0, 3, 3]]},
        ],
    }  # fmt: skip


def _expected_person() -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[2:5, 2:6] = True
    m[1:4, 7:11] = True
    m[6, 0] = True
    return m


def test_polygons_and_both_rle_kinds(coco, tmp_path):
    out = regions_from_coco(coco, {"person": "person", "tie": "tie"})
    assert set(out) == {"a.png", "sub/b.png"}
    assert out["sub/b.png"] == {}  # no person or tie there: both regions absent
    person, tie = out["a.png"]["person"], out["a.png"]["tie"]
    assert person.dtype == bool and person.shape == (H, W)
    np.testing.assert_array_equal(person, _expected_person())
    expected_tie = np.zeros((H, W), dtype=bool)
    expected_tie[8:10, 3:9] = True
    np.testing.assert_array_equal(tie, expected_tie)
    # from a file, and two categories onto one region: their union
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    both = regions_from_coco(path, {"person": "people", "tie": "people"})["a.png"]["people"]
    np.testing.assert_array_equal(both, _expected_person() | expected_tie)


def test_unknown_category_lists_the_available_ones(coco):
    with pytest.raises(DataError, match=r"unknown COCO categories \['cat'\]; available: \['dog'"):
        regions_from_coco(coco, {"cat": "cat", "dog": "dog"})


def test_bad_annotations(coco, tmp_path):
    coco["annotations"][2]["segmentation"] = {"size": [H + 1, W], "counts": "abc"}
    with pytest.raises(DataError, match=r"annotation 12: segmentation size \[11, 12\]"):
        regions_from_coco(coco, {"tie": "tie"})
    coco["annotations"][2] = {"id": 14, "image_id": 99, "category_id": 2, "segmentation": []}
    with pytest.raises(DataError, match=r"annotation 14 refers to unknown image_id 99"):
        regions_from_coco(coco, {"tie": "tie"})
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(DataError, match=r"bad.json: cannot read COCO annotations"):
        regions_from_coco(bad, {"tie": "tie"})
    with pytest.raises(DataError, match=r"not a COCO instances file"):
        regions_from_coco({"images": []}, {"tie": "tie"})


def test_write_coco_masks_reaches_the_manifest_format(coco, tmp_path):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    pixels = np.zeros((H, W, 3), dtype=np.uint8)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(pixels).save(data / "img" / name)
    manifest = pd.DataFrame(
        {"image": ["img/a.png", "img/b.png", "img/c.png"], "label": ["x", "y", "x"]}
    )
    table = write_coco_masks(coco, {"person": "person", "dog": "dog"}, data / "masks",
                             manifest=manifest)  # fmt: skip
    assert table["mask:person"].tolist() == ["masks/a.png.person.png", "", ""]
    assert table["mask:dog"].tolist() == ["", "masks/sub__b.png.dog.png", ""]
    assert "mask:person" not in manifest.columns  # the caller's table is left alone
    table.to_csv(data / "manifest.csv", index=False)
    ds = load_manifest(data / "manifest.csv", image_size=W, resize="letterbox")
    assert ds.regions == ["dog", "person"]
    s = ds[0]
    assert s.present == {"dog": False, "person": True}
    # letterbox of 12x10 into 12: no scaling, one padding row at the top (oy = 1)
    expected = torch.zeros(W, W, dtype=torch.bool)
    expected[1 : 1 + H] = torch.from_numpy(_expected_person())
    assert torch.equal(s.masks["person"], expected)
    with pytest.raises(DataError, match=r"already has column\(s\) \['mask:person'\]"):
        write_coco_masks(coco, {"person": "person"}, data / "masks", manifest=table)


def test_write_coco_masks_new_table(coco, tmp_path):
    table = write_coco_masks(coco, {"tie": "tie"}, tmp_path / "masks", image_dir="img")
    assert table.columns.tolist() == ["image", "mask:tie"]
    assert table["image"].tolist() == ["img/a.png", "img/sub/b.png"]
    assert table["mask:tie"].tolist() == ["masks/a.png.tie.png", ""]
    with Image.open(tmp_path / "masks" / "a.png.tie.png") as im:
        assert im.mode == "L" and im.size == (W, H)
        assert ((np.asarray(im) > 0) == regions_from_coco(coco, {"tie": "t"})["a.png"]["t"]).all()
