"""The automatic target layer and its layout on today's architectures, against pytorch-grad-cam.

Random weights, 224 px, one image per model; the last linear layer is re-drawn because
torchvision zero-initialises the ViT head (every gradient would be zero).
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam.base_cam
import torch
import torchvision
from pytorch_grad_cam import GradCAM, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from bias_audit.core.maps import explain, resolve_target_layer
from bias_audit.core.maps._explain import _check_methods, _run

# arch -> (automatic layer, its (h, w) at 224 px, leading tokens dropped or "last" for (N,h,w,C)).
# The README's table is this one.
ARCHS = {
    "vit_b_16": ("encoder.layers.encoder_layer_11.ln_1", (14, 14), 1),
    "vit_b_32": ("encoder.layers.encoder_layer_11.ln_1", (7, 7), 1),
    "swin_t": ("norm", (7, 7), "last"),
    "swin_v2_t": ("norm", (7, 7), "last"),
    "maxvit_t": ("blocks.3", (7, 7), None),
    "convnext_tiny": ("features", (7, 7), None),
    "efficientnet_b0": ("features", (7, 7), None),
    "efficientnet_v2_s": ("features", (7, 7), None),
    "mobilenet_v3_small": ("features", (7, 7), None),
    "regnet_y_400mf": ("trunk_output", (7, 7), None),
    "densenet121": ("features", (7, 7), None),
    "resnext50_32x4d": ("layer4", (7, 7), None),
}


def _redraw_head(model: nn.Module) -> nn.Module:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(last.weight, std=0.1)
    return model.eval()


def _build(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return _redraw_head(torchvision.models.get_model(arch, weights=None, num_classes=10))


def _hand_reshape(layout, shape):
    """The reshape a pytorch-grad-cam user writes by hand for this layout."""
    h, w = shape
    if layout == "last":
        return lambda t: t.permute(0, 3, 1, 2)
    if isinstance(layout, int):
        return lambda t: t[:, layout:].transpose(1, 2).reshape(t.shape[0], -1, h, w)
    return None


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max. pytorch-grad-cam's adds 1e-7 to the denominator, which swamps the
    1e-10-sized maps of some randomly initialised CNNs, so both sides are compared raw here."""
    maps = maps - maps.min(axis=(1, 2), keepdims=True)
    top = maps.max(axis=(1, 2), keepdims=True)
    return maps / np.where(top > 0, top, 1)


def _pgc(cls, model, layer_name, reshape, images, targets) -> np.ndarray:
    """pytorch-grad-cam's map at the layer's resolution, before its scaling: (N, h, w)."""
    cam = cls(
        model=model,
        target_layers=[model.get_submodule(layer_name)],
        reshape_transform=reshape,
    )
    cam.get_target_width_height = lambda _x: None  # compare at the layer's own resolution
    with pytest.MonkeyPatch.context() as mp, cam:
        mp.setattr(pytorch_grad_cam.base_cam, "scale_cam_image", lambda cam, _size=None: cam)
        out = cam(images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.zero_grad(set_to_none=True)
    return _normalise(out)


IMAGE = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_automatic_layer_and_gradcam_equal_pytorch_grad_cam(arch):
    layer, shape, layout = ARCHS[arch]
    model = _build(arch)
    exp = explain(model, IMAGE, methods=("gradcam",))
    assert exp.target_layer == layer
    assert exp.layer_shape == shape
    assert exp.maps["gradcam"].shape == (1, 224, 224)
    raw = _run(
        model, IMAGE, _check_methods(("gradcam",)), target_layer=None, targets=exp.targets,
        reshape=None, scorecam_batch_size=8,
    )  # fmt: skip
    got = raw.layer_maps["gradcam"].numpy()
    assert got.max() > 0
    if arch == "densenet121":
        # DenseNet applies F.relu(inplace=True) to `features`, which rewrites the tensor
        # pytorch-grad-cam's hook keeps (its map is the post-ReLU one); captum keeps a copy.
        from captum.attr import LayerGradCam

        attr = LayerGradCam(model, model.features).attribute(
            IMAGE, target=exp.targets, relu_attributions=True
        )
        want = _normalise(attr[:, 0].detach().numpy())
    else:
        want = _pgc(GradCAM, model, layer, _hand_reshape(layout, shape), IMAGE, exp.targets)
    assert np.abs(_normalise(got) - want).max() < 1e-4


def test_non_square_input_on_swin():
    # (N, h, w, C) on a 7 x 5 grid: told from (N, C, h, w) by the input's aspect, not by name.
    torch.manual_seed(0)
    model = _redraw_head(
        torchvision.models.SwinTransformer(
            patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1],
            window_size=[2, 2], num_classes=3,
        )
    )  # fmt: skip
    images = torch.randn(2, 3, 56, 40, generator=torch.Generator().manual_seed(1))
    exp = explain(model, images, methods=("gradcam",))
    assert exp.target_layer == "norm"
    assert exp.layer_shape == (7, 5)
    want = _pgc(GradCAM, model, "norm", _hand_reshape("last", (7, 5)), images, exp.targets)
    raw = _run(
        model, images, _check_methods(("gradcam",)), target_layer=None, targets=exp.targets,
        reshape=None, scorecam_batch_size=8,
    )  # fmt: skip
    assert np.abs(_normalise(raw.layer_maps["gradcam"].numpy()) - want).max() < 1e-4


class RegisterViT(torchvision.models.VisionTransformer):
    """A torchvision ViT with ``n_registers`` register tokens after the class token (Darcet et
    al. 2024, laid out as in DINOv2), and no square-input check: a 64 x 16 input gives the same
    16 patches as 32 x 32, on an 8 x 2 grid."""

    def __init__(self, n_registers: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.registers = nn.Parameter(torch.randn(1, n_registers, self.hidden_dim) * 0.02)
        self.encoder.pos_embedding = nn.Parameter(
            torch.randn(1, self.seq_length + n_registers, self.hidden_dim) * 0.02
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        n = x.shape[0]
        x = torch.cat(
            [self.class_token.expand(n, -1, -1), self.registers.expand(n, -1, -1), x], dim=1
        )
        x = self.encoder(x)
        return self.heads(x[:, 0])


@pytest.mark.parametrize("size", [(32, 32), (64, 16)])
def test_register_tokens_and_non_square_grid(size):
    torch.manual_seed(0)
    model = _redraw_head(
        RegisterViT(
            3, image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
            mlp_dim=32, num_classes=3,
        )
    )  # fmt: skip
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    grid = (size[0] // 8, size[1] // 8)
    exp = explain(model, images, methods=("gradcam",))
    assert exp.target_layer == "encoder.layers.encoder_layer_1.ln_1"
    assert exp.layer_shape == grid
    name, _, reshape = resolve_target_layer(model, None, images, None)
    assert (reshape.layout, reshape.shape, reshape.extra) == ("tokens", grid, 4)
    want = _pgc(GradCAM, model, name, _hand_reshape(4, grid), images, exp.targets)
    raw = _run(
        model, images, _check_methods(("gradcam",)), target_layer=None, targets=exp.targets,
        reshape=None, scorecam_batch_size=8,
    )  # fmt: skip
    assert np.abs(_normalise(raw.layer_maps["gradcam"].numpy()) - want).max() < 1e-4


def test_token_grid_without_a_patch_convolution():
    # Patches embedded by unfold + linear: no (N, D, h, w) output to read the grid from, so the
    # token count and the input's aspect give it (2 leading tokens, then 4 x 2 patches).
    class Unfolded(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3 * 8 * 8, 6)
            self.lead = nn.Parameter(torch.randn(1, 2, 6))
            self.mix = nn.Linear(6, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            p = nn.functional.unfold(x, 8, stride=8).transpose(1, 2)
            t = torch.cat([self.lead.expand(len(x), -1, -1), self.embed(p)], dim=1)
            return self.head(self.mix(t).mean(1))

    torch.manual_seed(0)
    model = Unfolded()
    images = torch.randn(2, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    name, _, reshape = resolve_target_layer(model, "mix", images, None)
    assert (reshape.layout, reshape.shape, reshape.extra) == ("tokens", (4, 2), 2)
    exp = explain(model, images, methods=("gradcam",), target_layer="mix")
    assert exp.layer_shape == (4, 2)
    # By hand: tokens 2.. of mix's output laid out row-major on the 4 x 2 grid.
    out = {}
    h = model.mix.register_forward_hook(lambda _m, _i, o: out.update(t=o))
    logits = model(images)
    h.remove()
    score = logits.gather(1, exp.targets[:, None]).sum()
    (g,) = torch.autograd.grad(score, out["t"])
    act = out["t"][:, 2:].detach().transpose(1, 2).reshape(2, 6, 4, 2)
    g = g[:, 2:].transpose(1, 2).reshape(2, 6, 4, 2)
    want = (g.mean((2, 3), keepdim=True) * act).sum(1).clamp(min=0)
    raw = _run(
        model, images, _check_methods(("gradcam",)), target_layer="mix", targets=exp.targets,
        reshape=None, scorecam_batch_size=8,
    )  # fmt: skip
    torch.testing.assert_close(raw.layer_maps["gradcam"], want)


def test_layercam_is_zero_on_a_signed_layer_where_gradcam_is_not():
    # Layer-CAM keeps relu(grad) * A: on a layer with signed activations (a transformer's
    # residual stream after its norm) that sum can be negative at every position, so the map
    # is all zero: a property of the method, which pytorch-grad-cam shares, not of the layer.
    model = _build("maxvit_t")
    raw = _run(
        model, IMAGE, _check_methods(("gradcam", "layercam")), target_layer=None, targets=None,
        reshape=None, scorecam_batch_size=8,
    )  # fmt: skip
    assert raw.layer_maps["gradcam"].max() > 0
    assert raw.layer_maps["layercam"].max() == 0
    want = _pgc(LayerCAM, model, raw.target_layer, None, IMAGE, raw.targets)
    assert want.max() == 0


def test_vit_tiny_p8_penalty_is_explains_gradcam_at_the_same_layer():
    # The trainer's attention penalty and the audit resolve the same token layer; the
    # penalty's map is explain's Grad-CAM of the label's margin there, and it trains (its
    # gradient reaches the patch embedding through the attention's double backward).
    from bias_audit.core.architectures import build_model
    from bias_audit.core.training._penalty import gradcam_mass

    torch.manual_seed(0)
    model = build_model("vit_tiny_p8", num_classes=2)
    nn.init.normal_(model.heads.head.weight, std=0.1)
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1])
    name, _, reshape = resolve_target_layer(model, None, images, None)
    assert name == "encoder.layers.encoder_layer_1.ln_1"
    region = torch.zeros(2, 96, 96, dtype=torch.bool)
    region[:, :32, 16:48] = True  # whole 8 px patches: rows 0-3, columns 2-5 of the 12 x 12 grid
    model.train()
    _, mass = gradcam_mass(model, images, labels, region, target_layer=name, reshape=reshape)
    mass.sum().backward()
    assert model.conv_proj.weight.grad.abs().sum() > 0

    model.eval()  # dropout is 0 in this ViT: train and eval passes agree
    raw = _run(
        model, images, _check_methods(("gradcam",)), target_layer=name,
        targets=lambda out: out.gather(1, labels[:, None])[:, 0] - out.mean(1),
        reshape=None, scorecam_batch_size=8,
    )  # fmt: skip
    cam = raw.layer_maps["gradcam"]
    want = cam[:, :4, 2:6].sum(dim=(1, 2)) / cam.sum(dim=(1, 2))
    torch.testing.assert_close(mass.detach(), want, rtol=1e-4, atol=1e-6)
