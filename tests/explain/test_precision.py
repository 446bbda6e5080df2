"""Half-precision models and target layers whose output is not a tensor."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bias_audit.core.architectures import SmallCNN
from bias_audit.core.maps import explain
from bias_audit.core.training._penalty import gradcam_mass
from bias_audit.errors import ModelError

from .conftest import TinyCNN

METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam")


def _quiet_tiny_cnn(head_scale: float) -> TinyCNN:
    """TinyCNN with its head scaled down: gradients at the layer are ~head_scale / 10.

    At 1e-3 such gradients are representable in float16, but their squares and cubes
    (Grad-CAM++) are not: weights taken in the model's precision round to zero there. At 1e-6
    the gradients themselves are below float16's normal range on their way down to the layer
    (the engine scales the backward, as mixed-precision training scales its loss).
    """
    torch.manual_seed(0)
    model = TinyCNN().eval()
    with torch.no_grad():
        model.fc.weight.mul_(head_scale)
    return model


@pytest.mark.parametrize("head_scale", [1e-3, 1e-6])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_maps_match_float32(dtype, head_scale, gen):
    half = _quiet_tiny_cnn(head_scale).to(dtype)
    images = torch.randn(3, 3, 8, 8, generator=gen).to(dtype)
    # The reference runs the same (rounded) weights and images in float32, so what is compared
    # is the engine, not the model's rounding.
    ref = explain(copy.deepcopy(half).float(), images.float(), METHODS, target_layer="relu2")
    half = explain(half, images, METHODS, target_layer="relu2", targets=ref.targets)
    eps = torch.finfo(dtype).eps
    for m in METHODS:
        got, want = half.maps[m], ref.maps[m]
        assert got.dtype == torch.float32 and torch.isfinite(got).all(), m
        assert (got.flatten(1).amax(1) > 0).all(), m
        # the forward itself ran in half precision: agree to a few of its rounding steps
        err = (got - want).norm() / want.norm()
        assert err < 8 * eps, (m, float(err))


def test_float64_model_keeps_float64_weights(gen):
    # float64 is not cut down to float32 before the weights: the maps equal the float64
    # formula (REFERENCES.md) up to the float32 rounding of the result.
    torch.manual_seed(0)
    model = SmallCNN(3, width=4).double().eval()
    images = torch.randn(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    exp = explain(model, images, ("gradcam++",), target_layer="features", targets=[0, 2])
    seen = []
    handle = model.features.register_forward_hook(lambda _m, _i, out: seen.append(out))
    out = model(images)
    handle.remove()
    a = seen[0]
    (g,) = torch.autograd.grad(out[0, 0] + out[1, 2], a)
    g2, g3 = g**2, g**3
    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, 1.0), 0.0)
    w = (alpha * g.clamp(min=0)).sum((2, 3), keepdim=True)
    layer_map = (w * a).sum(1).clamp(min=0).detach()[:, None]
    expected = F.interpolate(layer_map, size=(16, 16), mode="bilinear", align_corners=False)
    assert expected.abs().max() > 0
    torch.testing.assert_close(exp.maps["gradcam++"], expected[:, 0].float(), rtol=1e-6, atol=0)


class _TupleBlock(nn.Module):
    """Returns (features, a side output), as attention blocks and some backbones do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, y.mean()


class _TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _TupleBlock()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.block(x)
        return self.fc(self.pool(y).flatten(1))


def test_tuple_output_layer_says_so(gen):
    model = _TupleNet()
    images = torch.randn(2, 3, 8, 8, generator=gen)
    with pytest.raises(ModelError, match=r"'block' returns a tuple, not a tensor") as info:
        explain(model, images, target_layer="block")
    assert "not called" not in str(info.value) and "\n" not in str(info.value)
    # the module inside it works, and the automatic choice never picks the tuple
    assert explain(model, images, target_layer="block.conv").layer_shape == (8, 8)
    assert explain(model, images).target_layer == "block.conv"
    # the training penalty's capture says the same
    region = torch.zeros(2, 8, 8, dtype=torch.bool)
    with pytest.raises(ModelError, match=r"'block' returns a tuple, not a tensor"):
        gradcam_mass(model, images, torch.tensor([0, 1]), region, target_layer="block")
