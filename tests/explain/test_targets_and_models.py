"""Callable targets (RAM), transformers, and the map helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from bias_audit.core.maps import explain, normalize_maps, overlay

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_callable_target_equals_class_index(tiny_cnn):
    by_index = explain(tiny_cnn, X, methods=("gradcam", "layercam"), targets=torch.tensor([1, 1]))
    by_call = explain(tiny_cnn, X, methods=("gradcam", "layercam"), targets=lambda out: out[:, 1])
    for m in ("gradcam", "layercam"):
        torch.testing.assert_close(by_call.maps[m], by_index.maps[m])
    torch.testing.assert_close(by_call.targets, by_index.logits[:, 1])
    assert by_call.targets.dtype == torch.float32


def test_regression_output_gives_ram(tiny_cnn):
    # A regression head (N, 1): Grad-CAM of the scalar output is RAM.
    model = tiny_cnn
    model.fc = nn.Linear(6, 1)
    exp = explain(model, X, methods=("gradcam",), targets=lambda out: out[:, 0])
    assert exp.maps["gradcam"].shape == (2, 8, 8)
    assert exp.logits.shape == (2, 1)
    # On a GAP + linear head, Grad-CAM = relu(w . A) / Z: check it against the weights directly.
    feats = {}
    h = model.relu2.register_forward_hook(lambda _m, _a, o: feats.update(a=o.clone()))
    with torch.no_grad():
        model(X)
    h.remove()
    ram = (model.fc.weight[0][None, :, None, None] * feats["a"]).sum(1).clamp(min=0) / 64
    torch.testing.assert_close(exp.maps["gradcam"], ram.detach())


def test_vit_token_grid():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=3,
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision zero-initialises the head
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    exp = explain(model, images, methods=("gradcam", "hirescam"))
    assert exp.target_layer == "encoder.layers.encoder_layer_1.ln_1"
    assert exp.layer_shape == (4, 4)
    assert exp.maps["gradcam"].shape == (2, 32, 32)
    assert exp.maps["hirescam"].max() > 0
    assert model.training  # restored

    from pytorch_grad_cam import HiResCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from bias_audit.core.maps._explain import _check_methods, _run

    raw = _run(
        model,
        images,
        _check_methods(("hirescam",)),
        target_layer=None,
        targets=exp.targets,
        reshape=None,
        scorecam_batch_size=8,
    )
    cam = HiResCAM(
        model=model.eval(),
        target_layers=[model.encoder.layers[1].ln_1],
        reshape_transform=lambda t: t[:, 1:].transpose(1, 2).reshape(2, 16, 4, 4),
    )
    cam.get_target_width_height = lambda _x: None
    want = cam(images, targets=[ClassifierOutputTarget(int(t)) for t in exp.targets])
    model.zero_grad(set_to_none=True)
    got = raw.layer_maps["hirescam"].numpy()
    got = got - got.min(axis=(1, 2), keepdims=True)
    got = got / (1e-7 + got.max(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_swin_channels_last_grid():
    torch.manual_seed(0)
    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 1],
        window_size=[2, 2],
        num_classes=3,
    ).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    exp = explain(model, images, methods=("gradcam", "cam"))
    assert exp.target_layer == "norm"
    assert exp.layer_shape == (4, 4)
    # Swin ends in norm -> permute -> GAP -> linear: CAM = Grad-CAM x Z also holds here.
    torch.testing.assert_close(exp.maps["cam"], exp.maps["gradcam"] * 16, rtol=1e-4, atol=1e-6)


def test_explicit_reshape_for_other_models():
    class Tokens(nn.Module):  # (N, C, h, w) -> (N, h*w, C) -> head
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 4, 2, stride=2)
            self.mix = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            return self.head(self.mix(t).mean(1))

    torch.manual_seed(0)
    model = Tokens()
    grid = lambda t: t.transpose(1, 2).reshape(t.shape[0], -1, 4, 4)  # noqa: E731
    exp = explain(model, X, methods=("cam", "gradcam"), target_layer="mix", reshape=grid)
    assert exp.layer_shape == (4, 4)
    torch.testing.assert_close(exp.maps["cam"], exp.maps["gradcam"] * 16, rtol=1e-4, atol=1e-6)


def test_normalize_maps():
    maps = torch.stack([torch.arange(4.0).reshape(2, 2) + 3, torch.zeros(2, 2)])
    out = normalize_maps(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # all-zero stays zero
    nan = normalize_maps(torch.tensor([[[float("nan"), 1.0]]]))
    assert torch.isnan(nan).all()


@pytest.mark.parametrize("colormap", ["jet", "viridis"])
def test_overlay(colormap):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    raw = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    img = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    m = torch.zeros(4, 4)
    m[0, 0] = 2.0
    out = overlay(img, m, alpha=0.0, colormap=colormap, mean=mean, std=std)
    assert out.mode == "RGB" and out.size == (8, 8)
    # alpha = 0: the de-normalised image itself
    want = np.round(raw.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.abs(np.asarray(out).astype(int) - want).max() <= 1
    full = np.asarray(
        overlay(Image.fromarray(want), torch.zeros(8, 8), alpha=1.0, colormap=colormap)
    )
    # a zero map is the colormap's low end everywhere: dark blue (jet) or dark purple (viridis)
    low = {"jet": [0, 0, 128], "viridis": [68, 1, 84]}[colormap]
    assert (np.abs(full.astype(int) - low) <= 1).all()
