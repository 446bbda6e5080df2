"""The waterbirds case study: its generator (determinism, masks, proportions), its shipped
settings and acceptance. The case study itself (about 4 minutes) is not run here: its
measured results are case_studies/waterbirds/README.md's table."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bias_audit.case_studies import CASE_STUDIES, check_acceptance, load_expected
from bias_audit.case_studies import waterbirds as wb
from bias_audit.case_studies._runner import train_plan
from bias_audit.core.metrics._roles import role_masks
from bias_audit.errors import ConfigError, DataError
from bias_audit.io._resources import resource_dir

REPO = Path(__file__).resolve().parents[2]
SHIPPED = resource_dir("case_studies") / "waterbirds"
COUNTS = {"train": 400, "val": 8, "test": 16}
CELLS = ("land / landbird", "water / waterbird", "water / landbird", "land / waterbird")


def read_rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return wb.generate(tmp_path_factory.mktemp("wb"), image_size=48, n=COUNTS, seed=0)


def test_registry_and_roles():
    assert CASE_STUDIES["waterbirds"] is wb
    assert set(wb.ROLES["causal"]) | set(wb.ROLES["confounder"]) == set(wb.REGIONS)
    audit_toml = (SHIPPED / "audit.toml").read_text()
    assert 'causal = ["bird"]' in audit_toml and 'confounder = ["scene"]' in audit_toml


def test_proportions_95_percent_in_train_balanced_elsewhere(data):
    train = Counter((r["label"], r["place"]) for r in read_rows(data["train"]))
    # 200 per class; 95% on its own place
    assert train == {("landbird", "land"): 190, ("landbird", "water"): 10,
                     ("waterbird", "water"): 190, ("waterbird", "land"): 10}  # fmt: skip
    for split in ("val", "test"):
        cells = Counter((r["label"], r["place"]) for r in read_rows(data[split]))
        assert len(cells) == 4 and set(cells.values()) == {COUNTS[split] // 4}, split
    # shuffled: the first half of train is not one class
    first = [r["label"] for r in read_rows(data["train"])[:100]]
    assert 20 < first.count("landbird") < 80


def test_masks_partition_the_image_and_the_background_role_is_the_scene(data):
    root = data["test"].parent
    for row in read_rows(data["test"]):
        bird = np.asarray(Image.open(root / row["mask:bird"])) > 0
        scene = np.asarray(Image.open(root / row["mask:scene"])) > 0
        assert bird.shape == scene.shape == (48, 48)
        assert not (bird & scene).any() and (bird | scene).all()
        assert 0.02 < bird.mean() < 0.30  # a small bird on a large scene
        assert Image.open(root / row["image"]).size == (48, 48)
    # the audit's derived `background` role (outside every annotated region) is then empty,
    # and the confounder role is exactly the complement of the bird
    import torch

    masks = torch.stack([torch.from_numpy(bird), torch.from_numpy(scene)])[None]
    by_name, here = role_masks(masks, torch.ones(1, 2, dtype=torch.bool), wb.REGIONS, wb.ROLES)
    assert not by_name["background"].any()
    assert torch.equal(by_name["confounder"][0], ~by_name["causal"][0])


def test_the_label_map_is_the_masks_source_and_the_bird_is_drawn_there():
    rng = np.random.default_rng(3)
    sc = wb.draw_scene(rng, label="waterbird", place="land", size=64)
    masks = wb.region_masks(sc.labels)
    # the bird's pixels differ in colour from the scene's on average
    bird_mean = sc.image[masks["bird"]].mean(axis=0)
    scene_mean = sc.image[masks["scene"]].mean(axis=0)
    assert np.abs(bird_mean - scene_mean).max() > 20


def test_places_differ_in_colour_birds_in_shape():
    def scene_colour(place):
        out = []
        for i in range(40):
            sc = wb.draw_scene(np.random.default_rng(i), label="landbird", place=place, size=48)
            out.append(sc.image[wb.region_masks(sc.labels)["scene"]].mean(axis=0))
        return np.mean(out, axis=0)

    land, water = scene_colour("land"), scene_colour("water")
    assert water[2] > land[2] + 40 and land[1] > land[2]  # water blue, land green/brown

    def bird_height(label):  # the waterbird's long neck makes it taller
        rows = []
        for i in range(40):
            sc = wb.draw_scene(np.random.default_rng(i), label=label, place="land", size=64)
            ys = np.nonzero(wb.region_masks(sc.labels)["bird"].any(axis=1))[0]
            rows.append(ys.max() - ys.min())
        return np.mean(rows)

    assert bird_height("waterbird") > bird_height("landbird") + 2


def test_same_seed_same_bytes_other_seed_other_images(tmp_path, data):
    n = {"train": 20, "val": 4, "test": 8}
    a = wb.generate(tmp_path / "a", image_size=48, n=n, seed=5)
    b = wb.generate(tmp_path / "b", image_size=48, n=n, seed=5)
    c = wb.generate(tmp_path / "c", image_size=48, n=n, seed=6)
    assert tree_bytes(a["test"].parent.parent) == tree_bytes(b["test"].parent.parent)
    assert tree_bytes(a["test"].parent.parent) != tree_bytes(c["test"].parent.parent)
    # a second call returns at once; other parameters without force are refused by name
    assert wb.generate(tmp_path / "a", image_size=48, n=n, seed=5) == a
    with pytest.raises(DataError, match="seed"):
        wb.generate(tmp_path / "a", image_size=48, n=n, seed=7)
    stamp = json.loads((tmp_path / "a" / "generator.json").read_text())
    assert stamp["generator"] == "waterbirds" and stamp["counts"] == n


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="image_size"):
        wb.generate("unused", image_size=16)
    with pytest.raises(ConfigError, match=r"n\['test'\]"):
        wb.generate("unused", n={"test": 6})
    with pytest.raises(ConfigError, match="'nope'"):
        wb.generate("unused", n={"nope": 8})
    with pytest.raises(ConfigError, match="cues.shared_colour"):
        wb.Cues(shared_colour=1.5)


def test_shipped_settings_train_three_models_on_the_correlated_split(tmp_path):
    data, configs = train_plan(SHIPPED / "train.toml", tmp_path / "d", tmp_path / "m", quick=False)
    assert list(configs) == ["erm", "group_dro", "balanced"]
    assert [c.strategy for c in configs.values()] == ["erm", "group_dro", "balanced"]
    assert {Path(c.train_manifest).parent.name for c in configs.values()} == {"train"}
    assert all(c.groups == ("place",) for c in configs.values())
    expected = load_expected(SHIPPED / "expected.toml")
    assert expected["biased"]["model"] in configs
    assert set(expected["debiased"]["models"]) <= set(configs)


def _tables(acc: dict[str, dict[str, float]], mass: dict[str, tuple[float, float]], p: float):
    rows = [{"model": m, "cell": c, "metric": "accuracy", "value": v}
            for m, cells in acc.items() for c, v in cells.items()]  # fmt: skip
    for m, (conf, causal) in mass.items():
        rows += [{"model": m, "cell": "all", "metric": "mass:confounder", "value": conf},
                 {"model": m, "cell": "all", "metric": "mass:causal", "value": causal}]  # fmt: skip
    comparisons = pd.DataFrame([{"model_a": "erm", "model_b": m, "cell": "all",
                                 "metric": "mass:confounder", "p_value": p, "p_adjusted": p}
                                for m in ("group_dro", "balanced")])  # fmt: skip
    return pd.DataFrame(rows), comparisons


def test_acceptance_judges_the_worst_group_without_an_occlusion_section():
    expected = load_expected(SHIPPED / "expected.toml")
    assert "occlusion" not in expected and expected["margin"] == 0.03
    acc = {
        "erm": dict(zip(CELLS, (0.99, 0.99, 0.80, 0.70), strict=True)),
        "group_dro": dict(zip(CELLS, (0.95, 0.95, 0.90, 0.89), strict=True)),
        "balanced": dict.fromkeys(CELLS, 0.92),
    }
    mass = {"erm": (0.9, 0.1), "group_dro": (0.3, 0.7), "balanced": (0.3, 0.7)}
    checks = {(c.model, c.name): c for c in check_acceptance(*_tables(acc, mass, 1e-6), expected)}
    worst = checks[("erm", "worst-group accuracy")]
    assert worst.value == pytest.approx(0.70) and worst.passed  # .70 <= .75 - .03
    assert not any("flip" in name for _, name in checks)
    assert all(c.passed for c in checks.values()), [c.line for c in checks.values()]
    # .73 is within the margin of .75: fails; a debiased cell at .87 fails its .85 + .03
    acc["erm"]["land / waterbird"] = 0.73
    acc["group_dro"]["water / landbird"] = 0.87
    failed = {(c.model, c.name) for c in check_acceptance(*_tables(acc, mass, 1e-6), expected)
              if not c.passed}  # fmt: skip
    assert failed == {("erm", "worst-group accuracy"), ("group_dro", "accuracy [water / landbird]")}


def test_an_expected_file_needs_a_limit_for_the_biased_model(tmp_path):
    text = (SHIPPED / "expected.toml").read_text().replace("max_worst_group_accuracy", "max_wga")
    (tmp_path / "expected.toml").write_text(text)
    with pytest.raises(ConfigError, match="max_worst_group_accuracy missing"):
        load_expected(tmp_path / "expected.toml")
