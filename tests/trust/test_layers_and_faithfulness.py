"""Layer and method sensitivity and faithfulness on the Clever-Hans watermark case."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from bias_audit.core.architectures import SmallCNN
from bias_audit.core.maps import _explain, explain
from bias_audit.core.metrics import attention_mass
from bias_audit.core.trust import (
    LayerSensitivity,
    faithfulness,
    layer_sensitivity,
    preceding_layers,
    random_pixels,
    top_pixels,
    trust_findings,
)
from bias_audit.pipelines._trust import state_sha256
from tests.trust.clever_hans import make_images
from tests.trust.conftest import REGIONS, ROLES


def test_preceding_layers_resnet_and_smallcnn():
    x = torch.zeros(1, 3, 64, 64)
    resnet = torchvision.models.resnet18(num_classes=2).eval()
    assert preceding_layers(resnet, "layer4", x) == ["layer3", "layer2"]
    assert preceding_layers(resnet, "layer4", x, count=1) == ["layer3"]
    # SmallCNN's automatic layer is the whole `features`: the earlier blocks' ReLUs
    assert preceding_layers(SmallCNN(2, width=8), None, x) == ["features.14", "features.11"]


def test_layer_table_matches_a_hand_computation(hans):
    model = hans["model"]
    before = state_sha256(model)
    res = layer_sensitivity(
        model, hans["images"], hans["masks"], hans["present"], REGIONS, ROLES,
        methods=("gradcam", "gradcam++"),
    )  # fmt: skip
    assert state_sha256(model) == before
    t = res.table
    assert list(dict.fromkeys(t["layer"])) == ["features", "features.14", "features.11"]
    assert t.groupby("layer")["is_target"].first().to_dict() == {
        "features": True, "features.14": False, "features.11": False,
    }  # fmt: skip
    # the confounder mass at features.11 by hand: mean over images with the watermark
    maps = explain(model, hans["images"], methods="gradcam", target_layer="features.11").maps
    here = hans["present"][:, 1]
    mass = attention_mass(maps["gradcam"][here], hans["masks"][here, 1])
    area = hans["masks"][here, 1].float().mean(dim=(1, 2)).mean()
    row = t[(t.layer == "features.11") & (t.method == "gradcam") & (t.role == "confounder")]
    assert row["mass"].item() == pytest.approx(mass.mean().item(), rel=1e-5)
    assert row["lift"].item() == pytest.approx(mass.mean().item() / area.item(), rel=1e-5)
    assert row["n"].item() == int(here.sum())
    assert row["ci_low"].item() <= row["mass"].item() <= row["ci_high"].item()
    # the watermark (2.4% of the image) holds far more than its share: a high verdict
    target = t[t.is_target & (t.role == "confounder")]
    assert (target["lift"] > 3).all() and (target["verdict"] == "high").all()


def _table(rows):
    cols = ["layer", "is_target", "method", "role", "mass", "lift", "verdict"]
    return LayerSensitivity(table=pd.DataFrame(rows, columns=cols))


def test_findings_when_the_verdict_depends_on_the_layer_or_the_method():
    same = _table([
        ("layer4", True, "gradcam", "confounder", 0.135, 5.7, "high"),
        ("layer3", False, "gradcam", "confounder", 0.12, 5.0, "high"),
    ])  # fmt: skip
    assert trust_findings("m", layers=same) == []
    rows = [
        ("layer4", True, "gradcam", "confounder", 0.135, 5.7, "high"),
        ("layer3", False, "gradcam", "confounder", 0.025, 1.1, "none"),
        ("layer4", True, "layercam", "confounder", 0.07, 2.9, "medium"),
        ("layer3", False, "layercam", "confounder", 0.068, 2.8, "medium"),
    ]  # fmt: skip
    found = trust_findings("m", layers=_table(rows))
    codes = [(f.code, f.method, f.severity) for f in found]
    assert codes == [
        ("layer_dependent", "gradcam", "medium"),
        ("methods_disagree", "gradcam, layercam", "low"),
    ]
    assert "13.5%" in found[0].text and "layer3" in found[0].text


def test_pixel_masks_have_exact_counts(gen):
    maps = torch.rand(3, 10, 20, generator=gen)
    top = top_pixels(maps, 0.05)
    assert top.flatten(1).sum(1).tolist() == [10, 10, 10]
    # every chosen pixel is at least as large as every other
    for i in range(3):
        assert maps[i][top[i]].min() >= maps[i][~top[i]].max()
    rand = random_pixels(3, 10, 20, 0.2, seed=1)
    assert rand.flatten(1).sum(1).tolist() == [40, 40, 40]
    assert torch.equal(rand, random_pixels(3, 10, 20, 0.2, seed=1))
    assert not torch.equal(rand, random_pixels(3, 10, 20, 0.2, seed=2))


def _least_attended(p):
    """Grad-CAM turned upside down: the most weight where Grad-CAM has the least."""
    cam = _explain._gradcam_map(p)
    return cam.amax(dim=(1, 2), keepdim=True) - cam


def test_top_pixels_matter_more_than_random_ones_and_an_inverted_map_is_flagged(hans, monkeypatch):
    monkeypatch.setitem(
        _explain._METHODS, "inverted", _explain._Method(layer_grad=True, layer_map=_least_attended)
    )
    monkeypatch.setattr(_explain, "METHODS", (*_explain.METHODS, "inverted"))
    model = hans["model"]
    before = state_sha256(model)
    res = faithfulness(model, hans["images"], methods=("gradcam", "inverted"), seed=0)
    assert state_sha256(model) == before
    t = res.table.set_index(["method", "fraction"])
    g5 = t.loc[("gradcam", 0.05)]
    assert g5["drop_top"] > g5["drop_random"] + 0.1
    assert g5["excess_ci_low"] > 0
    assert g5["excess"] == pytest.approx(g5["drop_top"] - g5["drop_random"])
    assert not (t.loc["inverted"]["excess_ci_low"] > 0).any()
    found = trust_findings("hans", faith=res)
    assert [(f.code, f.method) for f in found] == [("not_faithful", "inverted")]
    assert all(math.isfinite(v) for v in t["drop_top"])
    assert np.all(t["n"] == 64)


def test_report_sentences_read_the_numbers():
    from bias_audit.report._trust import trust_context

    summary = {"trust": {
        "enabled": True, "sample": 8, "methods": ["gradcam", "sobel"], "max_spearman": 0.5,
        "fill": "blur",
        "findings": [{"code": "method_insensitive", "model": "a", "method": "sobel",
                      "text": "a: sobel ...", "severity": "high"}],
        "models": {"a": {
            "n": 8, "target_layer": "layer4",
            "randomization": [
                {"order": "top_down", "step": 1, "share": 1.0, "method": m, "spearman": s,
                 "ssim": 0.9, "modules": "fc..conv1"}
                for m, s in (("gradcam", 0.12), ("sobel", 0.98))
            ],
            "layers": [], "faithfulness": [],
        }},
    }}  # fmt: skip
    ctx = trust_context(summary)
    (a,) = ctx["models"]
    assert a["anchor"] == "trust-a" and a["passed"] is False
    assert "Spearman correlation of 0.12" in a["sentences"][0]
    assert "as they should" in a["sentences"][0]
    assert "barely depend" in a["sentences"][1]
    assert trust_context({"trust": {"enabled": False}}) == {"enabled": False, "models": []}


@pytest.mark.slow
def test_resnet18_watermark_layers_and_faithfulness(resnet_hans):
    """The Clever-Hans resnet18 at 64 px: it decides by the watermark (2.4% of the image).

    The issue expected the watermark mass at layer4 far above layer3. Measured, it is the other
    way round on this case at every size tried (Grad-CAM lift layer4 / layer3 / layer2): 64 px
    2.0 / 2.9 / 3.0 (all "medium": no layer_dependent finding); 128 px 3.0 / 5.6 / 6.2 (Grad-CAM
    ++ and LayerCAM: medium at layer4, high at layer3: a layer_dependent finding); 224 px 4.3 /
    6.4 / 5.9 (all high). Resolution explains part of it at 64 px only: one hot cell of layer4's
    2 x 2 grid, upsampled, gives at most lift 4.0 on the watermark (layer3's 4 x 4: 14.4), and
    layer4 reaches 2.0; at 128 and 224 px both layers stay far below their bounds (14 and 24
    for layer4). Faithfulness holds: deleting Grad-CAM's top 5% of pixels drops the probability
    by 0.43, random pixels by 0.08 (at 224 px the top 5% miss: 0.005; at 10%: 0.50).
    """
    model, images = resnet_hans["model"], resnet_hans["images"]
    with torch.no_grad():  # the case is a Clever Hans: without the watermark, chance
        clean = make_images(len(images), seed=1, watermark=False)["images"]
        acc = (model(images).argmax(1) == resnet_hans["labels"]).float().mean()
        acc_clean = (model(clean).argmax(1) == resnet_hans["labels"]).float().mean()
    assert acc >= 0.9 and acc_clean <= 0.65
    layers = layer_sensitivity(
        model, images, resnet_hans["masks"], resnet_hans["present"], REGIONS, ROLES,
        methods=("gradcam",), target_layer="layer4",
    )  # fmt: skip
    t = layers.table[layers.table.role == "confounder"].set_index("layer")
    assert list(t.index) == ["layer4", "layer3", "layer2"]
    assert (t["lift"] > 1.25).all()  # the watermark draws attention at every layer
    assert t.loc["layer3", "lift"] > t.loc["layer4", "lift"]  # what holds here (see above)
    faith = faithfulness(model, images, methods=("gradcam",), target_layer="layer4")
    f5 = faith.table.set_index("fraction").loc[0.05]
    assert f5["drop_top"] > f5["drop_random"] + 0.2 and f5["excess_ci_low"] > 0
    found = trust_findings("biased", layers=layers, faith=faith)
    assert "not_faithful" not in [f.code for f in found]
    differs = t["verdict"].nunique() > 1
    assert ("layer_dependent" in [f.code for f in found]) == differs


def test_a_shared_explanation_gives_the_same_tables_and_is_checked(hans):
    from bias_audit.core.trust import model_randomization
    from bias_audit.errors import ConfigError

    model, images = hans["model"], hans["images"][:16]
    exp = explain(model, images, methods=("gradcam",))
    alone = faithfulness(model, images, methods=("gradcam",))
    shared = faithfulness(model, images, methods=("gradcam",), explained=exp)
    pd.testing.assert_frame_equal(alone.table, shared.table)
    with pytest.raises(ConfigError, match="does not cover"):
        model_randomization(model, images, methods=("gradcam++",), explained=exp)
    with pytest.raises(ConfigError, match="not target_layer 'features.11'"):
        faithfulness(model, images, target_layer="features.11", explained=exp)


def test_chunks_give_the_same_numbers(hans):
    model, images = hans["model"], hans["images"][:20]
    args = (model, images, hans["masks"][:20], hans["present"][:20], REGIONS, ROLES)
    whole = layer_sensitivity(*args, batch_size=64).table
    chunked = layer_sensitivity(*args, batch_size=6).table
    pd.testing.assert_frame_equal(whole, chunked, rtol=1e-4)
    whole = faithfulness(model, images, batch_size=64).table
    chunked = faithfulness(model, images, batch_size=6).table
    pd.testing.assert_frame_equal(whole, chunked, rtol=1e-4)


def test_an_unknown_layer_is_named(hans):
    from bias_audit.errors import ConfigError

    with pytest.raises(ConfigError, match="layers: the model has no layer named 'layer9'"):
        layer_sensitivity(
            hans["model"], hans["images"][:4], hans["masks"][:4], hans["present"][:4], REGIONS,
            ROLES, layers=["layer9"],
        )  # fmt: skip


def test_every_layer_comes_from_one_backward_pass_per_chunk(hans, grad_calls):
    model, images = hans["model"], hans["images"][:20]
    args = (model, images, hans["masks"][:20], hans["present"][:20], REGIONS, ROLES)
    t = layer_sensitivity(*args, methods=("gradcam", "layercam"), batch_size=8).table
    assert t["layer"].nunique() == 3
    assert len(grad_calls) == 3  # 20 images in chunks of 8: one gradient call per chunk
