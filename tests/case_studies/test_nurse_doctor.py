from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bias_audit.case_studies import CASE_STUDIES
from bias_audit.case_studies import nurse_doctor as nd
from bias_audit.errors import ConfigError, DataError

SIZE = 48
# train_biased at the paper's skew: 22% of its doctors are women, 10% of its nurses men
COUNTS = {"train_biased": 200, "train_balanced": 40, "val": 8, "test": 16}


def read_rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return nd.generate(tmp_path_factory.mktemp("nd"), image_size=SIZE, n=COUNTS, seed=0)


def test_all_is_complete():
    import inspect

    import bias_audit.case_studies as pkg

    defined = {
        n
        for n, v in vars(nd).items()
        if not n.startswith("_")
        and (inspect.isfunction(v) or inspect.isclass(v))
        and v.__module__ == nd.__name__
    }
    constants = {n for n in vars(nd) if n.isupper() and not n.startswith("_")}
    assert defined | constants == set(nd.__all__)
    assert all(hasattr(pkg, n) for n in pkg.__all__)


def test_registry_names_the_generator():
    assert CASE_STUDIES["nurse-doctor"] is nd
    assert set(nd.ROLES["confounder"]) | set(nd.ROLES["causal"]) == set(nd.REGIONS)


def test_manifest_columns_and_paths(data):
    assert list(data) == list(nd.SPLITS)
    ids = []
    for split, manifest in data.items():
        assert manifest == manifest.parent.parent / split / "manifest.csv"
        with manifest.open(encoding="utf-8") as fh:
            header = fh.readline().strip().split(",")
        assert header == [
            "id",
            "image",
            "label",
            "gender",
            "mask:coat",
            "mask:face",
            "mask:hair",
            "mask:stethoscope",
            "hair",
            "skin_tone",
            "split",
        ]
        rows = read_rows(manifest)
        assert len(rows) == COUNTS[split]
        for row in rows:
            assert row["split"] == split
            assert row["label"] in nd.CLASSES and row["gender"] in nd.GENDERS
            image = manifest.parent / row["image"]
            assert not Path(row["image"]).is_absolute()
            with Image.open(image) as im:
                assert im.mode == "RGB" and im.size == (SIZE, SIZE)
            for region in nd.REGIONS:
                cell = row[f"mask:{region}"]
                if region in ("coat", "face"):  # always drawn, never fully hidden
                    assert cell, (row["id"], region)
                if cell:
                    with Image.open(manifest.parent / cell) as im:
                        assert im.mode == "L" and im.size == (SIZE, SIZE)
                        values = set(np.unique(np.asarray(im)).tolist())
                    assert values == {0, 255}, (row["id"], region)  # non-empty, binary
            ids.append(row["id"])
    assert len(ids) == len(set(ids))


def test_stethoscope_cell_empty_exactly_when_not_drawn(data):
    seen = set()
    for manifest in data.values():
        for row in read_rows(manifest):
            seen.add(bool(row["mask:stethoscope"]))
            if not row["mask:stethoscope"]:
                # no file was written for an absent region
                assert not (manifest.parent / "masks" / f"{row['id']}_stethoscope.png").exists()
    assert seen == {True, False}


def test_biased_split_is_skewed_as_promised(data):
    rows = read_rows(data["train_biased"])
    count = Counter((r["label"], r["gender"]) for r in rows)
    assert len(count) == 4  # counter-stereotypical examples exist, if rare
    doctors = count["doctor", "male"] + count["doctor", "female"]
    nurses = count["nurse", "male"] + count["nurse", "female"]
    assert doctors == nurses == COUNTS["train_biased"] // 2
    # the paper's skew: 195 of 250 doctors men (78%), 225 of 250 nurses women (90%)
    assert count["doctor", "male"] / doctors == pytest.approx(0.78, abs=0.005)
    assert count["nurse", "female"] / nurses == pytest.approx(0.90, abs=0.005)
    assert count["doctor", "male"] == round(doctors * nd.SKEW["doctor"][1])
    assert count["nurse", "female"] == round(nurses * nd.SKEW["nurse"][1])


@pytest.mark.parametrize("split", ["train_balanced", "val", "test"])
def test_balanced_splits_have_equal_cells(data, split):
    rows = read_rows(data[split])
    cells: dict[tuple[str, str], int] = {}
    for r in rows:
        cells[r["label"], r["gender"]] = cells.get((r["label"], r["gender"]), 0) + 1
    assert len(cells) == 4
    assert set(cells.values()) == {COUNTS[split] // 4}


def test_hair_is_a_strong_but_imperfect_gender_cue(tmp_path):
    rng = np.random.default_rng(0)
    styles = {
        g: [
            nd.draw_portrait(rng, label="nurse", gender=g, size=32).attrs["hair"]
            for _ in range(300)
        ]
        for g in nd.GENDERS
    }
    long_f = np.mean([s in ("long", "bob", "bun") for s in styles["female"]])
    long_m = np.mean([s in ("long", "bob", "bun") for s in styles["male"]])
    assert 0.75 < long_f < 0.97  # most women, not all
    assert 0.03 < long_m < 0.25  # some men


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    counts = {"train_biased": 8, "train_balanced": 8, "val": 4, "test": 4}
    a = nd.generate(tmp_path / "a", image_size=SIZE, n=counts, seed=0)
    b = nd.generate(tmp_path / "b", image_size=SIZE, n=counts, seed=0)
    c = nd.generate(tmp_path / "c", image_size=SIZE, n=counts, seed=1)
    ta, tb, tc = (tree_bytes(m["val"].parent.parent) for m in (a, b, c))
    assert ta == tb
    assert {k for k in ta if "/images/" in k} == {k for k in tc if "/images/" in k}
    assert ta["val/images/val-00000.png"] != tc["val/images/val-00000.png"]


@pytest.mark.parametrize("label", nd.CLASSES)
def test_masks_cover_exactly_the_drawn_pixels(label):
    # Without noise, a pixel's colour is its part's colour times the row's shading, so the
    # main colour of a region on one row must appear inside its mask and nowhere else on that row.
    cues = nd.Cues(noise=0, pale_scrubs=0.0, stethoscope_doctor=1.0)
    rng = np.random.default_rng(7)
    for gender in nd.GENDERS:
        for _ in range(4):
            p = nd.draw_portrait(rng, label=label, gender=gender, size=64, cues=cues)
            masks = nd.region_masks(p.labels)
            for region in ("coat", "hair", "stethoscope"):
                mask = masks[region]
                if region == "stethoscope" and label == "nurse":
                    continue
                assert mask.any(), region
                rgb = p.image.astype(np.int32)
                key = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
                checked = 0
                for y in range(64):
                    inside = key[y][mask[y]]
                    if inside.size < 3:
                        continue
                    values, counts = np.unique(inside, return_counts=True)
                    main = values[counts.argmax()]
                    assert not np.any(key[y][~mask[y]] == main), (region, gender, y)
                    checked += 1
                assert checked >= 2, region


def test_region_masks_are_disjoint():
    rng = np.random.default_rng(1)
    for label in nd.CLASSES:
        p = nd.draw_portrait(rng, label=label, gender="female", size=64)
        stack = np.stack(list(nd.region_masks(p.labels).values()))
        assert stack.sum(0).max() <= 1


def test_rerun_skips_a_complete_data_set(tmp_path):
    counts = {"train_biased": 8, "train_balanced": 8, "val": 4, "test": 4}
    m = nd.generate(tmp_path, image_size=SIZE, n=counts)
    image = m["val"].parent / "images" / "val-00001.png"
    image.write_bytes(b"not touched by a re-run")
    assert nd.generate(tmp_path, image_size=SIZE, n=counts) == m
    assert image.read_bytes() == b"not touched by a re-run"
    # force regenerates
    nd.generate(tmp_path, image_size=SIZE, n=counts, force=True)
    assert image.read_bytes().startswith(b"\x89PNG")


def test_interrupted_run_is_redone(tmp_path):
    counts = {"train_biased": 8, "train_balanced": 8, "val": 4, "test": 4}
    m = nd.generate(tmp_path / "ok", image_size=SIZE, n=counts)
    expected = tree_bytes(tmp_path / "ok")
    nd.generate(tmp_path / "cut", image_size=SIZE, n=counts)
    # simulate a kill half way: no stamp, a truncated image, no test manifest
    (tmp_path / "cut" / "generator.json").unlink()
    (tmp_path / "cut" / "val" / "images" / "val-00000.png").write_bytes(b"\x89PN")
    (tmp_path / "cut" / "test" / "manifest.csv").unlink()
    nd.generate(tmp_path / "cut", image_size=SIZE, n=counts)
    assert tree_bytes(tmp_path / "cut") == expected
    assert json.loads((tmp_path / "cut" / "generator.json").read_text())["seed"] == 0
    assert m["test"].exists()


def test_other_parameters_refused_without_force(tmp_path):
    counts = {"train_biased": 8, "train_balanced": 8, "val": 4, "test": 4}
    nd.generate(tmp_path, image_size=SIZE, n=counts, seed=0)
    with pytest.raises(DataError, match="seed"):
        nd.generate(tmp_path, image_size=SIZE, n=counts, seed=1)
    with pytest.raises(DataError, match="image_size"):
        nd.generate(tmp_path, image_size=SIZE + 16, n=counts, seed=0)
    (tmp_path / "generator.json").write_text("{not json")
    with pytest.raises(DataError, match="generator.json"):
        nd.generate(tmp_path, image_size=SIZE, n=counts, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"n": {"val2": 8}}, "val2"),
        ({"n": {"test": 6}}, "test"),
        ({"n": {"val": 2}}, "val"),
        ({"n": "many"}, "n"),
        ({"image_size": 16}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, culprit):
    with pytest.raises(ConfigError, match=culprit):
        nd.generate(tmp_path, **kwargs)
    assert not (tmp_path / "generator.json").exists()


def test_bad_cues_and_portrait_arguments_are_named():
    with pytest.raises(ConfigError, match="pale_scrubs"):
        nd.Cues(pale_scrubs=1.5)
    with pytest.raises(ConfigError, match="strands"):
        nd.Cues(strands=0.0)
    with pytest.raises(ConfigError, match="hair_volume"):
        nd.Cues(hair_volume=0.2)
    with pytest.raises(ConfigError, match="hair_male"):
        nd.Cues(hair_male=(0.5, 0.5, 0.5, 0.0, 0.0))
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="label"):
        nd.draw_portrait(rng, label="surgeon", gender="female")
    with pytest.raises(ConfigError, match="gender"):
        nd.draw_portrait(rng, label="nurse", gender="other")


def test_default_counts():
    full, quick = nd.default_counts(), nd.default_counts(quick=True)
    assert set(full) == set(quick) == set(nd.SPLITS)
    assert full["train_biased"] == full["train_balanced"]
    # --quick trains on the same amounts (the shortcut depends on them) and tests on fewer
    assert all(quick[s] == full[s] for s in ("train_biased", "train_balanced"))
    assert all(quick[s] < full[s] for s in ("val", "test"))


def test_hair_volume_widens_long_hair_only():
    def hair(style_p, volume):
        cues = nd.Cues(hair_female=style_p, hair_volume=volume)
        rng = np.random.default_rng(3)
        p = nd.draw_portrait(rng, label="nurse", gender="female", size=64, cues=cues)
        return int(nd.region_masks(p.labels)["hair"].sum())

    long_hair, bob = (1.0, 0.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0, 0.0)
    assert hair(long_hair, 2.0) > hair(long_hair, 1.0)
    assert hair(bob, 2.0) == hair(bob, 1.0)
