"""Model-parameter randomisation: maps of a real model lose their structure, an edge detector
does not, Quantus' MPRT agrees, and the audited model is never touched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from scipy.stats import spearmanr

from bias_audit.core.architectures import SmallCNN
from bias_audit.core.config import TrustConfig
from bias_audit.core.maps import _explain
from bias_audit.core.maps import explain as explain_maps
from bias_audit.core.trust import (
    model_randomization,
    randomization_chunks,
    randomize,
    trust_findings,
)
from bias_audit.errors import ConfigError
from bias_audit.pipelines._trust import state_sha256
from tests.trust.clever_hans import make_images


def _sobel(p) -> torch.Tensor:
    """|gradient| of the grey input: a 'map' that knows nothing of the model."""
    grey = p.images.float().mean(dim=1, keepdim=True)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])[None, None]
    gx = F.conv2d(grey, kx, padding=1)
    gy = F.conv2d(grey, kx.transpose(2, 3), padding=1)
    return (gx**2 + gy**2).sqrt()[:, 0]


@pytest.fixture
def sobel_method(monkeypatch):
    """Register "sobel" in the explain registry for this test only."""
    monkeypatch.setitem(_explain._METHODS, "sobel", _explain._Method(layer_map=_sobel))
    monkeypatch.setattr(_explain, "METHODS", (*_explain.METHODS, "sobel"))
    return "sobel"


def test_chunks_cover_every_module_once_and_end_with_the_logits():
    model = torchvision.models.resnet18(num_classes=2)
    chunks = randomization_chunks(model, 5)
    flat = [n for c in chunks for n in c]
    resettable = [n for n, m in model.named_modules() if n and hasattr(m, "reset_parameters")]
    assert flat == resettable
    assert len(chunks) == 5 and chunks[-1] == ["fc"]
    assert randomization_chunks(model, 1) == [resettable]


def test_randomize_changes_a_copy_and_restores_the_global_rng(hans):
    model = hans["model"]
    before = state_sha256(model)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    twin = randomize(model, ["fc", "features.0"], seed=0)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is untouched
    assert state_sha256(model) == before
    assert not torch.equal(twin.fc.weight, model.fc.weight)
    assert torch.equal(twin.features[3].weight, model.features[3].weight)
    # each module's new weights depend on the seed only, not on what else is reset
    again = randomize(model, ["features.0"], seed=0)
    assert torch.equal(again.features[0].weight, twin.features[0].weight)


def test_gradcam_loses_its_structure_and_an_edge_detector_is_flagged(hans, sobel_method):
    model = hans["model"]
    before = state_sha256(model)
    images = hans["images"]
    res = model_randomization(model, images, methods=("gradcam", sobel_method), steps=4)
    assert state_sha256(model) == before  # the audited model is bit-for-bit unchanged
    t = res.table
    assert set(t["order"]) == {"top_down", "bottom_up"}
    full = t[(t["order"] == "top_down") & (t["share"] == 1.0)].set_index("method")
    assert full.loc["gradcam", "spearman"] < 0.3
    assert full.loc[sobel_method, "spearman"] == pytest.approx(1.0)
    assert full.loc[sobel_method, "ssim"] == pytest.approx(1.0, abs=1e-6)
    # both orders end on the same fully randomised model
    last = t[t["share"] == 1.0].groupby("method")["spearman"].nunique()
    assert (last == 1).all()
    # the table's mean is the mean of the per-image values
    rho = res.per_image[("top_down", 4, "gradcam")]
    assert full.loc["gradcam", "spearman"] == pytest.approx(float(np.nanmean(rho.numpy())))
    found = trust_findings("hans", randomization=res)
    assert [(f.code, f.method) for f in found] == [("method_insensitive", sobel_method)]


def test_agrees_with_quantus_mprt(hans):
    quantus = pytest.importorskip("quantus")
    model = hans["model"]
    images = hans["images"][:16]
    exp = explain_maps(model, images, methods="gradcam")
    targets = exp.targets

    def explain_func(model, inputs, targets, **_):
        x = torch.as_tensor(inputs, dtype=torch.float32)
        t = torch.as_tensor(targets).long()
        maps = explain_maps(model, x, methods="gradcam", target_layer="features", targets=t)
        return maps.maps["gradcam"][:, None].numpy()

    ours = model_randomization(
        model, images, methods=("gradcam",), target_layer="features", targets=targets,
        steps=1000, seed=7, draws=1,
    )  # fmt: skip
    metric = quantus.MPRT(
        layer_order="top_down", seed=7, return_last_correlation=True, disable_warnings=True,
        display_progressbar=False, abs=False, normalise=False,
    )  # fmt: skip
    scores = metric(
        model=model, x_batch=images.numpy(), y_batch=targets.numpy(),
        a_batch=exp.maps["gradcam"][:, None].numpy(), explain_func=explain_func,
        channel_first=True, device="cpu", batch_size=16,
    )  # fmt: skip
    theirs = float(np.nanmean(np.asarray(scores, dtype=float)))
    t = ours.table
    full = t[(t["order"] == "top_down") & (t["share"] == 1.0)]["spearman"].iloc[0]
    # The issue asks for 0.05; with the same per-module seeding our first draw is Quantus'
    # model, so the numbers are equal up to rounding.
    assert full == pytest.approx(theirs, abs=1e-6)


@pytest.mark.slow
def test_resnet18_gradcam_loses_its_structure_and_an_edge_detector_fails(resnet_hans, sobel_method):
    """A resnet18 trained briefly on the 64 px watermark case (about 20 s on one core).

    One fully randomised network is a sample of one. Measured on this model (layer4 is 2 x 2
    at 64 px), Grad-CAM's mean Spearman after full randomisation with seeds 0..9 one at a time:
    0.30, 0.67, 0.41, 0.04, -0.01, 0.19, -0.03, -0.10, -0.12, -0.07 (mean 0.13, sd 0.26
    between draws). A random network's Grad-CAM has a layout of its own, the same for every
    image, that matches the trained maps' layout by chance or not. The default spreads the
    sample over 4 draws (on 64 images over ten seeds: sd 0.11 instead of 0.47 with one draw).
    """
    model = resnet_hans["model"]
    before = state_sha256(model)
    images = resnet_hans["images"]
    res = model_randomization(model, images, methods=("gradcam", sobel_method), steps=5)
    assert state_sha256(model) == before
    t = res.table
    full = t[(t["order"] == "top_down") & (t["share"] == 1.0)].set_index("method")
    assert full.loc["gradcam", "draws"] == TrustConfig().draws == 4
    assert full.loc["gradcam", "spearman"] < 0.3
    assert full.loc[sobel_method, "spearman"] == pytest.approx(1.0)
    found = trust_findings("resnet18", randomization=res)
    assert [(f.code, f.method) for f in found] == [("method_insensitive", sobel_method)]


def _rank_rho(a: torch.Tensor, b: torch.Tensor) -> float:
    """scipy's Spearman; NaN (with a warning silenced here) when a map is constant."""
    if a.min() == a.max() or b.min() == b.max():
        return float("nan")
    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


def test_every_step_is_the_model_randomize_makes(hans):
    """The working copy switches modules by copying tensors; each step must still be exactly
    ``randomize(model, modules so far, seed)``, in both orders (scipy's Spearman by hand)."""
    model, images = hans["model"], hans["images"][:6]
    res = model_randomization(model, images, steps=3, seed=5, draws=1, n_boot=10)
    exp = explain_maps(model, images, methods="gradcam")
    chunks = randomization_chunks(model, 3)
    for order, sequence in (("top_down", chunks[::-1]), ("bottom_up", chunks)):
        done: list[str] = []
        for step, chunk in enumerate(sequence, start=1):
            done = done + chunk
            twin = randomize(model, done, seed=5)
            rand = explain_maps(twin, images, methods="gradcam", targets=exp.targets)
            want = [_rank_rho(exp.maps["gradcam"][i], rand.maps["gradcam"][i]) for i in range(6)]
            got = res.per_image[(order, step, "gradcam")]
            np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_draws_spread_the_images_over_random_models(hans):
    """Image i is explained by draw i % draws (seed + that draw) at every step; the
    other-image Spearman pairs it with the previous image of the same draw."""
    model, images = hans["model"], hans["images"][:10]
    kw = {"methods": ("gradcam",), "steps": 2, "n_boot": 10}
    one = [model_randomization(model, images, seed=s, draws=1, **kw) for s in (3, 4)]
    two = model_randomization(model, images, seed=3, draws=2, **kw)
    t = two.table
    assert (t["draws"] == 2).all()
    for key, rho in two.per_image.items():
        torch.testing.assert_close(rho[0::2], one[0].per_image[key][0::2], equal_nan=True)
        torch.testing.assert_close(rho[1::2], one[1].per_image[key][1::2], equal_nan=True)
        row = t[(t["order"] == key[0]) & (t["step"] == key[1])].iloc[0]
        assert row["spearman"] == pytest.approx(float(np.nanmean(rho.numpy())))
    exp = explain_maps(model, images, methods="gradcam")
    full = randomization_chunks(model, 2)
    names = [n for chunk in full for n in chunk]
    others = []
    for d in (0, 1):
        idx = list(range(d, 10, 2))
        twin = randomize(model, names, seed=3 + d)
        rand = explain_maps(twin, images[idx], methods="gradcam", targets=exp.targets[idx])
        for j, i in enumerate(idx):
            others.append(_rank_rho(exp.maps["gradcam"][i], rand.maps["gradcam"][j - 1]))
    last = t[t["step"] == 2]
    assert last["spearman_other_image"].to_numpy() == pytest.approx([np.nanmean(others)] * 2)
    # one image per draw: no other image shares its random model
    alone = model_randomization(model, images[:3], seed=3, draws=5, **kw).table
    assert (alone["draws"] == 3).all() and alone["spearman_other_image"].isna().all()
    with pytest.raises(ConfigError, match="draws"):
        model_randomization(model, images, draws=0, **kw)


def test_smallcnn_untrained_is_not_flagged_for_gradcam():
    torch.manual_seed(0)
    model = SmallCNN(2, width=8).eval()
    images = make_images(8, seed=2)["images"]
    res = model_randomization(model, images, methods=("gradcam",), steps=2)
    assert len(res.table) == 2 * 2
    assert trust_findings("m", randomization=res, max_spearman=1.0) == []


def test_tiny_images_get_no_ssim_but_a_spearman():
    torch.manual_seed(0)
    model = SmallCNN(2, width=8).eval()
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = model_randomization(model, images, methods=("gradcam",), steps=2).table
    assert t["ssim"].isna().all()
    assert len(t) == 4
