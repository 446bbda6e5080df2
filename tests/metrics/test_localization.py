import math
import warnings

import numpy as np
import pytest
import torch

from bias_audit.core.metrics import (
    area_fraction,
    attention_mass,
    boxes_from_masks,
    lift,
    localization_iou,
    map_boxes,
    pointing_game,
    rank_accuracy,
    role_masks,
    sample_metrics,
)
from bias_audit.errors import ConfigError, DataError

NAN = float("nan")


def _hand_case():
    # A 4x4 map whose numbers can be checked on paper.
    m = torch.tensor(
        [[0.0, 1.0, 2.0, 0.0], [0.0, 4.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]]
    )
    r = torch.zeros(4, 4, dtype=torch.bool)
    r[0:2, 1:3] = True  # holds 1 + 2 + 4 + 3 = 10 of 15
    return m[None], r[None]


def test_hand_computed_4x4():
    maps, masks = _hand_case()
    assert attention_mass(maps, masks).item() == pytest.approx(10 / 15)
    assert area_fraction(masks).item() == pytest.approx(4 / 16)
    assert lift(maps, masks).item() == pytest.approx((10 / 15) / (4 / 16))
    # top-4 values are 5, 4, 3, 2; three of them (4, 3, 2) lie in R.
    assert rank_accuracy(maps, masks).item() == pytest.approx(3 / 4)
    # the maximum 5 sits at (3, 3), outside R; its nearest R pixel (1, 2) is sqrt(5) away.
    assert pointing_game(maps, masks).item() == 0.0
    assert pointing_game(maps, masks, tolerance=2.0).item() == 0.0
    assert pointing_game(maps, masks, tolerance=math.sqrt(5)).item() == 1.0
    assert boxes_from_masks(masks).tolist() == [[1.0, 0.0, 3.0, 2.0]]
    # threshold 0.15*5 = 0.75: blobs {1,2,4,3} (4 px) and {5} (1 px); the big one is boxed.
    assert map_boxes(maps).tolist() == [[1.0, 0.0, 3.0, 2.0]]
    assert localization_iou(maps, torch.tensor([[1.0, 0.0, 3.0, 2.0]])).item() == 1.0
    # box (2,0)-(4,4) overlaps 1x2 of a 2x2 blob box: IoU = 2 / (4 + 8 - 2)
    assert localization_iou(maps, torch.tensor([[2.0, 0.0, 4.0, 4.0]])).item() == pytest.approx(0.2)
    # At threshold 0.9 only the single 5 survives.
    assert map_boxes(maps, threshold=0.9).tolist() == [[3.0, 3.0, 4.0, 4.0]]


def test_diagonal_pixels_are_one_component():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = maps[0, 1, 1] = maps[0, 2, 2] = 1.0
    maps[0, 0, 3] = 1.0
    assert map_boxes(maps).tolist() == [[0.0, 0.0, 3.0, 3.0]]


def test_ties_are_broken_in_raster_order():
    maps = torch.ones(1, 4, 4)
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0, :2] = True  # the first two pixels in raster order
    assert rank_accuracy(maps, masks).item() == 1.0
    assert pointing_game(maps, masks).item() == 1.0
    masks2 = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks2[0, 3, 3] = True
    assert rank_accuracy(maps, masks2).item() == 0.0
    assert pointing_game(maps, masks2).item() == 0.0
    # A uniform map has lift 1 on any region.
    assert lift(maps, masks2).item() == pytest.approx(1.0)


def test_degenerate_inputs_give_nan():
    maps = torch.zeros(3, 5, 5)
    maps[1, 2, 2] = 1.0
    maps[2, 1, 1] = NAN
    masks = torch.zeros(3, 5, 5, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True  # all-zero map
    # masks[1] stays empty
    masks[2, 1:3, 1:3] = True  # non-finite map
    for fn in (attention_mass, lift, rank_accuracy, pointing_game):
        assert torch.isnan(fn(maps, masks)).all(), fn.__name__
    assert area_fraction(masks).tolist() == pytest.approx([4 / 25, 0.0, 4 / 25])
    boxes = boxes_from_masks(masks)
    assert torch.isnan(boxes[1]).all() and not torch.isnan(boxes[0]).any()
    iou = localization_iou(maps, boxes)
    assert torch.isnan(iou).all()  # zero map, NaN box, NaN map
    assert torch.isnan(map_boxes(maps)[[0, 2]]).all()


def test_empty_mask_is_not_a_pointing_hit():
    # Quantus counts it as a hit; we must not.
    maps = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    assert torch.isnan(pointing_game(maps, masks)).all()


def test_bad_inputs_raise():
    maps = torch.rand(2, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    with pytest.raises(DataError, match="maps"):
        attention_mass(maps[0], masks)
    with pytest.raises(DataError, match="maps"):
        attention_mass(-maps, masks)
    with pytest.raises(DataError, match="maps"):
        attention_mass(maps.long(), masks)
    with pytest.raises(DataError, match="masks"):
        attention_mass(maps, masks.float())
    with pytest.raises(DataError, match="masks"):
        rank_accuracy(maps, masks[:, :3])
    with pytest.raises(DataError, match="boxes"):
        localization_iou(maps, torch.zeros(3, 4))
    with pytest.raises(DataError, match="row 1"):
        localization_iou(maps, torch.tensor([[0.0, 0, 2, 2], [3.0, 0, 1, 2]]))
    with pytest.raises(DataError, match="threshold"):
        localization_iou(maps, torch.zeros(2, 4), threshold=0.0)
    with pytest.raises(DataError, match="tolerance"):
        pointing_game(maps, masks, tolerance=-1)


def _quantus(metric_cls, maps, masks):

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(maps[0].numel(), 2))
    n = maps.shape[0]
    x = maps[:, None].numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = metric_cls(normalise=False, abs=False, disable_warnings=True)
        out = metric(
            model=model,
            x_batch=x,
            y_batch=np.zeros(n, dtype=int),
            a_batch=maps[:, None].numpy(),
            s_batch=masks[:, None].numpy().astype(float),
            channel_first=True,
            device="cpu",
        )
    return np.asarray(out, dtype=float)


def test_agrees_with_quantus(gen):
    import quantus

    maps = torch.rand(6, 12, 12, generator=gen)  # continuous values: no ties
    masks = torch.rand(6, 12, 12, generator=gen) < 0.3
    masks[0] = False
    masks[0, 2:6, 3:9] = True
    ours_mass = attention_mass(maps, masks).numpy()
    ours_rank = rank_accuracy(maps, masks).numpy()
    np.testing.assert_allclose(
        ours_mass, _quantus(quantus.RelevanceMassAccuracy, maps, masks), rtol=1e-5
    )
    np.testing.assert_allclose(
        ours_rank, _quantus(quantus.RelevanceRankAccuracy, maps, masks), rtol=1e-5
    )


def test_pointing_agrees_with_quantus_where_defined(gen):
    import quantus

    maps = torch.rand(16, 12, 12, generator=gen)
    masks = torch.rand(16, 12, 12, generator=gen) < 0.4
    ours = pointing_game(maps, masks).numpy()
    assert 0 < ours.sum() < 16  # both hits and misses are exercised
    np.testing.assert_array_equal(ours, _quantus(quantus.PointingGame, maps, masks))


def test_rank_accuracy_against_direct_topk(gen):
    maps = torch.rand(5, 9, 7, generator=gen)
    masks = torch.rand(5, 9, 7, generator=gen) < 0.4
    got = rank_accuracy(maps, masks)
    for i in range(5):
        k = int(masks[i].sum())
        top = torch.topk(maps[i].flatten(), k).indices
        assert got[i].item() == pytest.approx(masks[i].flatten()[top].float().mean().item())


def _region_batch(gen):
    n, h, w = 4, 16, 16
    maps = torch.rand(n, h, w, generator=gen)
    masks = torch.zeros(n, 3, h, w, dtype=torch.bool)
    masks[:, 0, 0:5, 0:5] = True  # hair
    masks[:, 1, 8:12, 2:10] = True  # coat
    masks[:, 2, 10:16, 12:16] = True  # face
    present = torch.ones(n, 3, dtype=torch.bool)
    present[1, 1] = False  # image 1 has no coat
    present[2] = False  # image 2 has no annotation at all
    return maps, masks, present


REGIONS = ("hair", "coat", "face")
ROLES = {"causal": ["coat"], "confounder": ["hair", "face"]}


def test_role_masks_union_and_background(gen):
    maps, masks, present = _region_batch(gen)
    by, here = role_masks(masks, present, REGIONS, ROLES)
    assert list(by) == ["hair", "coat", "face", "causal", "confounder", "background"]
    assert torch.equal(by["confounder"][0], masks[0, 0] | masks[0, 2])
    assert not by["coat"][1].any() and not here["coat"][1] and not here["causal"][1]
    assert here["confounder"][1]
    # background excludes every present region; image 2 has none, so no background either.
    assert torch.equal(by["background"][0], ~(masks[0, 0] | masks[0, 1] | masks[0, 2]))
    assert here["background"].tolist() == [True, True, False, True]


def test_role_masks_errors(gen):
    maps, masks, present = _region_batch(gen)
    with pytest.raises(ConfigError, match="stethoscope"):
        role_masks(masks, present, REGIONS, {"causal": ["stethoscope"]})
    with pytest.raises(ConfigError, match="villain"):
        role_masks(masks, present, REGIONS, {"villain": ["hair"]})
    with pytest.raises(ConfigError, match="background"):
        role_masks(masks, present, REGIONS, {"background": ["hair"]})
    with pytest.raises(DataError, match="regions"):
        role_masks(masks, present, REGIONS[:2], ROLES)
    with pytest.raises(DataError, match="present"):
        role_masks(masks, present[:, :2], REGIONS, ROLES)


def test_sample_metrics_matches_single_functions(gen):
    maps, masks, present = _region_batch(gen)
    out = sample_metrics(maps, masks, present, REGIONS, ROLES)
    names = [*REGIONS, "causal", "confounder", "background"]
    expected_keys = [
        f"{m}:{n}" for m in ("area", "mass", "lift", "rank", "pointing", "loc_iou") for n in names
    ]
    assert list(out) == expected_keys
    by, here = role_masks(masks, present, REGIONS, ROLES)
    for n in names:
        absent = ~here[n]
        for key, ref in (
            ("mass", attention_mass(maps, by[n])),
            ("lift", lift(maps, by[n])),
            ("rank", rank_accuracy(maps, by[n])),
            ("pointing", pointing_game(maps, by[n])),
            ("loc_iou", localization_iou(maps, boxes_from_masks(by[n]))),
            ("area", area_fraction(by[n])),
        ):
            ref = ref.masked_fill(absent, NAN)
            torch.testing.assert_close(out[f"{key}:{n}"], ref, equal_nan=True, msg=f"{key}:{n}")
    assert torch.isnan(out["mass:coat"][1]) and torch.isnan(out["area:coat"][1])
    assert torch.isnan(out["mass:background"][2]) and torch.isnan(out["area:background"][2])
    # masses of disjoint regions plus background add up to 1 on fully annotated images
    total = out["mass:hair"] + out["mass:coat"] + out["mass:face"] + out["mass:background"]
    torch.testing.assert_close(total[[0, 3]], torch.ones(2))


def test_sample_metrics_subset_and_errors(gen):
    maps, masks, present = _region_batch(gen)
    out = sample_metrics(maps, masks, present, REGIONS, ROLES, metrics=("mass",))
    assert {k.split(":")[0] for k in out} == {"area", "mass"}
    with pytest.raises(ConfigError, match="metrics"):
        sample_metrics(maps, masks, present, REGIONS, ROLES, metrics="mass")
    with pytest.raises(ConfigError, match="energy"):
        sample_metrics(maps, masks, present, REGIONS, ROLES, metrics=("energy",))
    with pytest.raises(DataError, match="masks"):
        sample_metrics(maps, masks[:, :, :8], present, REGIONS, ROLES)
    with pytest.raises(DataError, match="masks"):
        sample_metrics(maps[:2], masks, present, REGIONS, ROLES)


def test_rank_accuracy_with_many_ties_takes_them_in_raster_order(gen):
    # Few distinct values (as in a ReLU'd map full of zeros): ties straddle the K-th place.
    maps = torch.randint(0, 3, (8, 6, 5), generator=gen).float()
    maps[0] = 0.0
    maps[0, 5, 4] = 1.0  # one positive pixel, the rest tied at zero
    masks = torch.rand(8, 6, 5, generator=gen) < 0.4
    got = rank_accuracy(maps, masks)
    for i in range(8):
        k = int(masks[i].sum())
        flat = maps[i].flatten()
        # reference: a stable descending order keeps raster order among equal values
        order = sorted(range(flat.numel()), key=lambda j: (-flat[j].item(), j))[:k]
        expect = masks[i].flatten()[order].float().mean().item()
        assert got[i].item() == pytest.approx(expect), i


def test_sample_metrics_options(gen):
    maps, masks, present = _region_batch(gen)
    wide = sample_metrics(maps, masks, present, REGIONS, ROLES, tolerance=3.0, threshold=0.5)
    by, here = role_masks(masks, present, REGIONS, ROLES)
    ref = pointing_game(maps, by["hair"], tolerance=3.0).masked_fill(~here["hair"], NAN)
    torch.testing.assert_close(wide["pointing:hair"], ref, equal_nan=True)
    ref = localization_iou(maps, boxes_from_masks(by["face"]), threshold=0.5)
    torch.testing.assert_close(
        wide["loc_iou:face"], ref.masked_fill(~here["face"], NAN), equal_nan=True
    )
    with pytest.raises(DataError, match="threshold"):
        sample_metrics(maps, masks, present, REGIONS, ROLES, threshold=1.5)
    with pytest.raises(DataError, match="tolerance"):
        sample_metrics(maps, masks, present, REGIONS, ROLES, tolerance=-2)
