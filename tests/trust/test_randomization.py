"""Model-parameter randomisation: maps of a real model lose their structure, an edge detector
does not, Quantus' MPRT agrees, and the audited model is never touched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from bias_audit.core.architectures import SmallCNN
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
    between draws); the same with another image's randomised map: mean 0.03. A random
    network's Grad-CAM has a layout of its own, the same for every image, that matches the
    trained maps' layout by chance or not; at 128 px: mean 0.20 (sd 0.33), another image's
    0.17. With ten draws the issue's "< 0.3" holds with two standard errors to spare.
    """
    model = resnet_hans["model"]
    before = state_sha256(model)
    images = resnet_hans["images"]
    res = model_randomization(model, images, methods=("gradcam", sobel_method), steps=5, draws=10)
    assert state_sha256(model) == before
    t = res.table
    full = t[(t["order"] == "top_down") & (t["share"] == 1.0)].set_index("method")
    assert full.loc["gradcam", "draws"] == 10
    assert full.loc["gradcam", "spearman"] < 0.3
    assert full.loc[sobel_method, "spearman"] == pytest.approx(1.0)
    found = trust_findings("resnet18", randomization=res)
    assert [(f.code, f.method) for f in found] == [("method_insensitive", sobel_method)]


def test_draws_average_the_fully_randomised_models(hans):
    model, images = hans["model"], hans["images"][:12]
    kw = {"methods": ("gradcam",), "steps": 2, "n_boot": 10}
    one = [model_randomization(model, images, seed=s, draws=1, **kw) for s in (3, 4)]
    two = model_randomization(model, images, seed=3, draws=2, **kw)
    t = two.table
    assert t.set_index(["order", "step"])["draws"].to_dict() == {
        ("top_down", 1): 1, ("top_down", 2): 2, ("bottom_up", 1): 1, ("bottom_up", 2): 2,
    }  # fmt: skip
    # the first step is the seed's one draw; the last the per-image mean of the two draws
    torch.testing.assert_close(
        two.per_image[("top_down", 1, "gradcam")], one[0].per_image[("top_down", 1, "gradcam")]
    )
    a, b = (o.per_image[("top_down", 2, "gradcam")] for o in one)
    torch.testing.assert_close(two.per_image[("top_down", 2, "gradcam")], (a + b) / 2)
    full = t[t["step"] == 2].iloc[0]
    ssims = [o.table[o.table["step"] == 2]["ssim"].iloc[0] for o in one]
    assert full["ssim"] == pytest.approx(np.mean(ssims))
    assert -1 <= full["spearman_other_image"] <= 1
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
