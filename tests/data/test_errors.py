"""Every bad input names the file, the row and the column; skip mode lists what it dropped."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bias_audit.errors import ConfigError, DataError
from bias_audit.io.data import load_manifest

from .conftest import write_image, write_manifest, write_mask


def _good_row(folder: Path, name: str = "ok.png") -> dict:
    write_image(folder / name, 20, 10)
    write_mask(folder / "ok_mask.png", np.ones((10, 20), dtype=bool))
    return {
        "image": name,
        "label": "doctor",
        "gender": "female",
        "bbox:coat": "1 1 5 5",
        "mask:hair": "ok_mask.png",
    }


def _corrupt_png(path: Path) -> None:
    write_image(path, 20, 10)
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"IDAT") + 10] ^= 0xFF  # the chunk's CRC no longer matches
    path.write_bytes(bytes(raw))


def _rgb_mask(path: Path) -> None:
    Image.new("RGB", (20, 10), (255, 255, 255)).save(path)


CASES = [
    ("image", "missing.png", None, r"row 2, column 'image': file not found: 'missing.png'"),
    ("image", "bad.png", _corrupt_png, r"row 2, column 'image': unreadable or corrupt image"),
    ("image", "text.png", lambda p: p.write_text("hi"), r"row 2, column 'image': unreadable"),
    ("image", "", None, r"row 2, column 'image': empty image path"),
    ("bbox:coat", "a b", None, r"row 2, column 'bbox:coat': expected 'x0 y0 x1 y1', got 'a b'"),
    ("bbox:coat", "1 2 3", None, r"row 2, column 'bbox:coat': expected 'x0 y0 x1 y1'"),
    ("bbox:coat", "1 2 3 nan", None, r"row 2, column 'bbox:coat': expected 'x0 y0 x1 y1'"),
    ("bbox:coat", "8 1 4 5", None, r"row 2, column 'bbox:coat': inverted or empty box"),
    ("bbox:coat", "1 5 4 5", None, r"row 2, column 'bbox:coat': inverted or empty box"),
    ("bbox:coat", "0 0 21 10", None, r"row 2, column 'bbox:coat': box '0 0 21 10' is outside"),
    ("bbox:coat", "-1 0 5 5", None, r"row 2, column 'bbox:coat': .* outside the 20x10 image"),
    ("mask:hair", "nope.png", None, r"row 2, column 'mask:hair': file not found: 'nope.png'"),
    (
        "mask:hair",
        "rgb.png",
        _rgb_mask,
        r"column .mask:hair.: .* not a 2-D image \(mode RGB",
    ),
    ("mask:hair", "bad.png", _corrupt_png, r"row 2, column 'mask:hair': unreadable or corrupt"),
    ("label", "", None, r"row 2, column 'label': empty label"),
    ("gender", "", None, r"row 2, column 'gender': empty group attribute"),
    ("image", "ok.png", None, r"row 2, column 'image': duplicate id 'ok.png' \(first in row 1\)"),
]


@pytest.mark.parametrize(("column", "value", "make", "match"), CASES)
def test_bad_cell_names_file_row_and_column(tmp_path, column, value, make, match):
    good = _good_row(tmp_path)
    if make is not None:
        make(tmp_path / value)
    path = write_manifest(tmp_path, [good, {**good, "image": "other.png", column: value}])
    if column != "image":
        write_image(tmp_path / "other.png", 20, 10)
    with pytest.raises(DataError, match=match) as info:
        load_manifest(path, groups=["gender"])
    assert str(path) in str(info.value)


def test_label_not_in_classes(tmp_path):
    good = _good_row(tmp_path)
    path = write_manifest(tmp_path, [{**good, "id": "a"}, {**good, "id": "b", "label": "chef"}])
    with pytest.raises(DataError, match=r"row 2, column 'label': label 'chef' is not in classes"):
        load_manifest(path, classes=["doctor", "nurse"])


def test_duplicate_id_column(tmp_path):
    good = _good_row(tmp_path)
    path = write_manifest(tmp_path, [{**good, "id": "a"}, {**good, "id": "b"}, {**good, "id": "a"}])
    with pytest.raises(DataError, match=r"row 3, column 'id': duplicate id 'a' \(first in row 1\)"):
        load_manifest(path)
    assert load_manifest(path.parent / path.name, on_error="skip").ids == ["a", "b"]


@pytest.mark.parametrize("drop", ["image", "label", "gender"])
def test_missing_required_column(tmp_path, drop):
    row = _good_row(tmp_path)
    del row[drop]
    path = write_manifest(tmp_path, [row])
    with pytest.raises(DataError, match=rf"manifest.csv: missing required column.s. \['{drop}'\]"):
        load_manifest(path, groups=["gender"])


def test_missing_custom_id_and_label_columns(tmp_path):
    path = write_manifest(tmp_path, [_good_row(tmp_path)])
    with pytest.raises(DataError, match=r"missing required column\(s\) \['occupation', 'uid'\]"):
        load_manifest(path, label="occupation", id_column="uid")


def test_path_escapes_are_refused(tmp_path):
    root = tmp_path / "data"
    good = _good_row(root)
    outside = write_image(tmp_path / "outside.png", 20, 10)
    os.symlink(outside, root / "link.png")
    for cell, match in [
        ("../outside.png", r"row 2, column 'image': path '../outside.png' resolves outside"),
        ("sub/../../outside.png", r"row 2, column 'image': path .* resolves outside"),
        (str(outside), r"row 2, column 'image': absolute path .* refused"),
        ("link.png", r"row 2, column 'image': path 'link.png' resolves outside"),
    ]:
        path = write_manifest(root, [good, {**good, "image": cell}])
        with pytest.raises(DataError, match=match):
            load_manifest(path)
        assert len(load_manifest(path, allow_outside_root=True)) == 2
    path = write_manifest(root, [{**good, "mask:hair": "../outside.png"}])
    with pytest.raises(DataError, match=r"row 1, column 'mask:hair': path .* resolves outside"):
        load_manifest(path)


def test_symlink_inside_root_is_fine(tmp_path):
    good = _good_row(tmp_path)
    os.symlink(tmp_path / "ok.png", tmp_path / "alias.png")
    path = write_manifest(tmp_path, [good, {**good, "image": "alias.png"}])
    assert len(load_manifest(path)) == 2


def test_bad_manifest_files(tmp_path):
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"m.xlsx: unknown manifest format '.xlsx'"):
        load_manifest(tmp_path / "m.xlsx")
    with pytest.raises(DataError, match=r"nothere.csv: manifest not found"):
        load_manifest(tmp_path / "nothere.csv")
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "label": "x"}\n{"image": \n')
    with pytest.raises(DataError, match=r"m.jsonl: line 2: invalid JSON"):
        load_manifest(tmp_path / "m.jsonl")
    (tmp_path / "e.csv").write_text("image,label\n")
    with pytest.raises(DataError, match=r"e.csv: the manifest has no rows"):
        load_manifest(tmp_path / "e.csv")
    (tmp_path / "r.csv").write_text("image,label,mask:\na.png,x,\n")
    with pytest.raises(DataError, match=r"r.csv: column 'mask:' has no region name"):
        load_manifest(tmp_path / "r.csv")


def test_image_changed_after_loading(tmp_path):
    path = write_manifest(tmp_path, [_good_row(tmp_path)])
    ds = load_manifest(path)
    (tmp_path / "ok.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"ok.png: row 1: cannot decode image"):
        ds[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resize": "stretch"}, "resize"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": 2.5}, "image_size"),
        ({"on_error": "ignore"}, "on_error"),
        ({"classes": ["a", "a"]}, "classes"),
        ({"classes": "ab"}, "classes"),
        ({"groups": ["n"]}, "groups"),
        ({"groups": ["label"]}, "groups"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
        ({"min_group_size": -1}, "min_group_size"),
        ({"label": ""}, "label"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    path = write_manifest(tmp_path, [_good_row(tmp_path)])
    with pytest.raises(ConfigError, match=match):
        load_manifest(path, **kwargs)


def test_image_column_is_not_a_group(tmp_path):
    path = write_manifest(tmp_path, [_good_row(tmp_path)])
    with pytest.raises(ConfigError, match=r"groups: \['image'\]"):
        load_manifest(path, groups=["image"])


def test_skip_mode_reports_every_bad_row(tmp_path):
    good = _good_row(tmp_path)
    _rgb_mask(tmp_path / "rgb.png")
    rows = [
        good,
        {**good, "image": "missing.png"},
        {**good, "id": "x", "bbox:coat": "9 9 1 1"},
        {**good, "id": "y"},
        {**good, "id": "z", "mask:hair": "rgb.png"},
        {**good, "id": "w", "label": "nurse", "mask:hair": ""},
        {**good, "id": "y"},
    ]
    for r in rows:
        r.setdefault("id", "ok")
    path = write_manifest(tmp_path, rows)
    ds = load_manifest(path, on_error="skip", groups=["gender"])
    assert ds.ids == ["ok", "y", "w"]
    assert list(ds.table.index) == [1, 4, 6]
    assert ds.skipped["row"].tolist() == [2, 3, 5, 7]
    assert ds.skipped["column"].tolist() == ["image", "bbox:coat", "mask:hair", "id"]
    assert "inverted" in ds.skipped["reason"][1] and "duplicate" in ds.skipped["reason"][3]
    assert ds.classes == ["doctor", "nurse"]
    summary = ds.skip_summary()
    assert "4 of 7 rows skipped" in summary and "bbox:coat: 1" in summary
    assert "\n" not in summary
    assert ds[2].present == {"coat": True, "hair": False}


def test_skip_mode_with_every_row_bad(tmp_path):
    good = _good_row(tmp_path)
    path = write_manifest(tmp_path, [{**good, "image": "a.png"}, {**good, "image": "b.png"}])
    with pytest.raises(DataError, match=r"all 2 rows skipped; first: row 1, column 'image'"):
        load_manifest(path, on_error="skip")


def test_csv_with_byte_order_mark(tmp_path):
    _good_row(tmp_path)
    (tmp_path / "m.csv").write_bytes("\ufeffimage,label\nok.png,doctor\n".encode())
    assert load_manifest(tmp_path / "m.csv").table.columns.tolist() == ["image", "label", "id"]


def test_truncated_jpeg_is_refused_at_load_or_skipped(tmp_path):
    # verify() cannot see a truncated JPEG; load decodes every pixel, so it fails there (naming
    # file, row and column) instead of half-way through a run, and skip mode records it.
    write_image(tmp_path / "t.jpg", 64, 48)
    write_image(tmp_path / "ok.png", 64, 48)
    raw = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(raw[: len(raw) // 2])
    rows = [{"image": "t.jpg", "label": "x"}, {"image": "ok.png", "label": "x"}]
    path = write_manifest(tmp_path, rows)
    with pytest.raises(
        DataError, match=r"row 1, column 'image': unreadable or corrupt image 't.jpg'"
    ):
        load_manifest(path)
    ds = load_manifest(path, on_error="skip")
    assert ds.ids == ["ok.png"]
    assert ds.skipped[["row", "column"]].values.tolist() == [[1, "image"]]
    assert "truncated" in ds.skipped["reason"].iloc[0]


@pytest.mark.parametrize("name", ["model", "pred", "target", "map_ok", "correct", "prob", "id"])
def test_group_named_like_a_samples_column_is_refused(tmp_path, name):
    # A group "model" would replace the samples table's model column: findings about fake models.
    row = {**_good_row(tmp_path), name: "a"}
    path = write_manifest(tmp_path, [row])
    with pytest.raises(ConfigError, match=rf"groups: '{name}' is a column of the samples"):
        load_manifest(path, groups=[name])


def test_sixteen_bit_image_is_scaled_by_its_bit_depth(tmp_path):
    # A real 16-bit PNG written by PIL: value v becomes round(v / 65535 * 255), not min(v, 255).
    # Each value fills a 2-pixel-wide column of an 8 x 8 image, so resizing keeps it exact.
    values = np.array([[0, 0, 257, 257, 32896, 32896, 65535, 65535]], dtype=np.uint16)
    values = values.repeat(8, axis=0)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode in ("I;16", "I")
    path = write_manifest(tmp_path, [{"image": "deep.png", "label": "x"}])
    ds = load_manifest(path, image_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    got = (ds[0].image * 255).round().to(torch.int64)
    assert got.shape == (3, 8, 8)
    assert got[:, 0].tolist() == [[0, 0, 1, 1, 128, 128, 255, 255]] * 3


def test_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    from bias_audit.io.data import _manifest

    write_image(tmp_path / "big.png", 40, 30)
    path = write_manifest(tmp_path, [{"image": "big.png", "label": "x"}])
    monkeypatch.setattr(_manifest, "MAX_PIXELS", 40 * 30 - 1)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(DataError, match=r"row 1, column 'image': 'big.png' 40x30 = 1200 pixels"):
        load_manifest(path)
    assert decoded == []  # refused before decoding a pixel


def test_real_decompression_bomb_is_refused_without_decoding(tmp_path):
    # 12000 x 12000 of zeros compresses to a few hundred KB; decoding it would take 432 MB.
    Image.new("L", (12000, 12000)).save(tmp_path / "bomb.png", optimize=True)
    assert (tmp_path / "bomb.png").stat().st_size < 1_000_000
    path = write_manifest(tmp_path, [{"image": "bomb.png", "label": "x"}])
    with pytest.raises(DataError, match=r"'bomb.png' 12000x12000 = 144000000 pixels is over"):
        load_manifest(path)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_nul_byte_in_a_path_is_a_row_error(tmp_path, on_error):
    rows = [{**_good_row(tmp_path), "image": "ok\x00.png"}, _good_row(tmp_path, "b.png")]
    path = write_manifest(tmp_path, rows, name="m.jsonl")
    if on_error == "raise":
        with pytest.raises(DataError, match=r"row 1, column 'image': .*control characters"):
            load_manifest(path)
        return
    ds = load_manifest(path, on_error="skip")
    assert ds.ids == ["b.png"] and ds.skipped["row"].tolist() == [1]


def test_repeated_csv_header_is_refused(tmp_path):
    write_image(tmp_path / "a.png", 8, 8)
    (tmp_path / "m.csv").write_text("image,label,gender,gender\na.png,x,f,m\n")
    with pytest.raises(DataError, match=r"m.csv: repeated column name\(s\) \['gender'\]"):
        load_manifest(tmp_path / "m.csv", groups=["gender"])


def test_nan_float_mask_is_refused_and_never_inside(tmp_path):
    from bias_audit.io.data._manifest import _mask_array

    write_image(tmp_path / "a.png", 4, 4)
    m = np.zeros((4, 4), dtype=np.float32)
    m[0, 0], m[1, 1] = np.nan, 1.0
    Image.fromarray(m, mode="F").save(tmp_path / "m.tif")
    path = write_manifest(tmp_path, [{"image": "a.png", "label": "x", "mask:r": "m.tif"}])
    with pytest.raises(DataError, match=r"column 'mask:r': mask 'm.tif' has NaN"):
        load_manifest(path)
    assert _mask_array(Image.open(tmp_path / "m.tif")).sum() == 1


def test_image_over_twice_the_limit_is_the_same_refusal(tmp_path, recwarn):
    # Over 2 x PIL's limit, Image.open itself raises; the message still names file and limit.
    Image.new("1", (14000, 14000)).save(tmp_path / "huge.png")
    path = write_manifest(tmp_path, [{"image": "huge.png", "label": "x"}])
    with pytest.raises(DataError, match=r"'image': 'huge.png' is over the limit of 89478485"):
        load_manifest(path)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
