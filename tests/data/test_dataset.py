from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bias_audit.io.data import Batch, Sample, collate, load_manifest


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


def _rows(folder):
    return [
        {"image": f"img/{i}.png", "label": lab, "gender": g, "bbox:coat": box, "id": f"s{i}"}
        for i, (lab, g, box) in enumerate(
            [
                ("nurse", "female", "1 1 9 9"),
                ("doctor", "male", ""),
                ("doctor", "female", "0 0 4 4"),
            ]
        )
    ]


def test_three_formats_give_identical_datasets(tmp_path):
    from .conftest import write_image, write_manifest

    for i in range(3):
        write_image(tmp_path / "img" / f"{i}.png", 12 + 4 * i, 10, seed=i)
    sets = [
        load_manifest(
            write_manifest(tmp_path, _rows(tmp_path), name), groups=["gender"], image_size=8
        )
        for name in ("m.csv", "m.parquet", "m.jsonl")
    ]
    ref = sets[0]
    for ds in sets[1:]:
        pd.testing.assert_frame_equal(ds.table, ref.table)
        assert ds.classes == ref.classes and ds.regions == ref.regions
        pd.testing.assert_frame_equal(ds.cells(), ref.cells())
        for i in range(len(ref)):
            a, b = ds[i], ref[i]
            assert torch.equal(a.image, b.image) and a.id == b.id and a.attrs == b.attrs
            assert a.present == b.present
            assert all(torch.equal(a.masks[r], b.masks[r]) for r in ref.regions)


def test_parquet_and_jsonl_non_string_cells(tmp_path):
    from .conftest import write_image

    write_image(tmp_path / "a.png", 8, 8)
    # An integer attribute with a gap becomes float in pandas; it must still read "3", not "3.0".
    df = pd.DataFrame({"image": ["a.png", "a.png"], "label": [1, 2], "age": [3, None],
                       "id": ["x", "y"]})  # fmt: skip
    df.to_parquet(tmp_path / "m.parquet")
    ds = load_manifest(tmp_path / "m.parquet", on_error="skip", groups=["age"])
    assert ds.classes == ["1"] and ds[0].attrs == {"age": "3"}
    assert ds.skipped["column"].tolist() == ["age"]
    (tmp_path / "m.jsonl").write_text(
        '{"image": "a.png", "label": 1, "age": 3, "id": "x"}\n'
        '{"image": "a.png", "label": 2, "age": null, "id": "y"}\n'
    )
    ds2 = load_manifest(tmp_path / "m.jsonl", on_error="skip", groups=["age"])
    pd.testing.assert_frame_equal(ds2.table, ds.table)


def test_dataloader_with_two_workers(small_manifest):
    from torch.utils.data import DataLoader

    ds = load_manifest(small_manifest, groups=["gender"], image_size=16, augment=True, seed=5)
    ds.set_epoch(2)
    direct = collate([ds[i] for i in range(len(ds))])
    loader = DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=2)
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 2]
    # Workers reproduce the augmentation of the main process: it depends on (seed, epoch, index).
    assert torch.equal(torch.cat([b.images for b in batches]), direct.images)
    assert torch.equal(torch.cat([b.masks for b in batches]), direct.masks)
    assert sum((b.ids for b in batches), []) == direct.ids
    assert torch.cat([b.index for b in batches]).tolist() == list(range(6))


def test_fingerprint_follows_content(small_manifest):
    ds = load_manifest(small_manifest, image_size=8)
    fp = ds.fingerprint()
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 64
    assert load_manifest(small_manifest, image_size=32).fingerprint() == fp
    image = small_manifest.parent / "img" / "2.png"
    original = image.read_bytes()
    # One pixel changes by one level: still a valid image, so no row is skipped.
    from PIL import Image

    with Image.open(image) as im:
        pixels = np.array(im)
    pixels[5, 7, 1] ^= 1
    Image.fromarray(pixels).save(image)
    changed = load_manifest(small_manifest, image_size=8)
    assert len(changed) == 6 and changed.fingerprint() != fp
    image.write_bytes(original)
    assert load_manifest(small_manifest, image_size=8).fingerprint() == fp
    mask = small_manifest.parent / "masks" / "0.png"
    mask.write_bytes(mask.read_bytes() + b"\0")
    assert load_manifest(small_manifest, image_size=8).fingerprint() != fp


def test_fingerprint_by_hand(tmp_path):
    import hashlib

    from .conftest import write_image, write_manifest

    write_image(tmp_path / "a.png", 4, 4)
    path = write_manifest(tmp_path, [{"image": "a.png", "label": "x"}])
    h = hashlib.sha256()
    for f in (path, tmp_path / "a.png"):
        data = f.read_bytes()
        h.update(len(data).to_bytes(8, "little") + data)
    assert load_manifest(path).fingerprint() == f"sha256:{h.hexdigest()}"


def test_classes_given_keep_their_order_and_empty_cells(small_manifest):
    ds = load_manifest(small_manifest, classes=["nurse", "doctor", "chef"], image_size=8)
    assert ds.classes == ["nurse", "doctor", "chef"]
    assert ds[0].label == 0 and ds[1].label == 1
    cells = ds.cells()
    assert cells["cell"].tolist() == ["nurse", "doctor", "chef"]
    assert cells["n"].tolist() == [3, 3, 0]


def test_letterbox_pads_with_the_mean(tmp_path):
    from PIL import Image

    from .conftest import write_manifest

    Image.new("RGB", (20, 10), (255, 255, 255)).save(tmp_path / "w.png")
    path = write_manifest(tmp_path, [{"image": "w.png", "label": "x"}])
    s = load_manifest(path, image_size=10, resize="letterbox")[0]
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(s.image[:, 3:7], white[:, None, None].expand(3, 4, 10), atol=1e-5)
    assert (s.image[:, :2] == 0).all() and (s.image[:, 8:] == 0).all()


def test_labels_and_sample_cells_without_decoding(small_manifest):
    ds = load_manifest(small_manifest, groups=["gender"], image_size=8)
    assert ds.labels == [ds[i].label for i in range(len(ds))]
    cells = ds.sample_cells()
    assert cells == [f"{ds[i].attrs['gender']} / {ds.classes[ds[i].label]}" for i in range(6)]
    counts = ds.cells().set_index("cell")["n"]
    assert all(counts[c] == cells.count(c) for c in set(cells))
    assert ds[np.int64(2)].index == 2 and ds[-1].index == 5
    with pytest.raises(IndexError, match="index 6"):
        ds[6]


def test_box_as_json_or_parquet_list(tmp_path):
    from .conftest import write_image

    write_image(tmp_path / "a.png", 10, 8)
    rows = [{"image": "a.png", "label": "x", "bbox:b": [1, 2, 6, 7]}]
    pd.DataFrame(rows).to_json(tmp_path / "m.jsonl", orient="records", lines=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "m.parquet")
    pd.DataFrame([{**rows[0], "bbox:b": "1 2 6 7"}]).to_csv(tmp_path / "m.csv", index=False)
    ref = load_manifest(tmp_path / "m.csv", image_size=8)[0].masks["b"]
    assert ref.any()
    for name in ("m.jsonl", "m.parquet"):
        assert torch.equal(load_manifest(tmp_path / name, image_size=8)[0].masks["b"], ref)
