"""Attention rollout on torchvision ViTs, against a plain reimplementation from the weights."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from bias_audit.core.maps import explain
from bias_audit.core.maps._explain import _check_methods, _run
from bias_audit.errors import ModelError


def _tiny_vit() -> torchvision.models.VisionTransformer:
    """Patch 8 on 32 px (4 x 4 patches), 2 layers, 2 heads, width 8; every weight set by a
    formula so the attention is far from uniform and the test needs no random state."""
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16,
        num_classes=3,
    )  # fmt: skip
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(model.named_parameters())):
            idx = torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape)
            p.copy_(0.3 * torch.sin(1.7 * idx + i) + (1.0 if p.ndim == 1 and "ln" in name else 0.0))
    return model.eval()


def _plain_rollout(model, images: torch.Tensor) -> torch.Tensor:
    """Attention weights recomputed by hand from each block's ln_1 output and in_proj weights,
    then rolled out with the residual (Abnar and Zuidema 2020, eq. for A = 0.5 W + 0.5 I)."""
    inputs = []
    hooks = [
        layer.ln_1.register_forward_hook(lambda _m, _i, o: inputs.append(o.detach()))
        for layer in model.encoder.layers
    ]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    n, t, d = inputs[0].shape
    heads = 2
    roll = torch.eye(t).expand(n, t, t).clone()
    for x, layer in zip(inputs, model.encoder.layers, strict=True):
        mha = layer.self_attention
        wq, wk, _ = mha.in_proj_weight.detach().chunk(3)
        bq, bk, _ = mha.in_proj_bias.detach().chunk(3)
        q = (x @ wq.T + bq).reshape(n, t, heads, d // heads).transpose(1, 2)
        k = (x @ wk.T + bk).reshape(n, t, heads, d // heads).transpose(1, 2)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        a = 0.5 * attn.mean(1) + 0.5 * torch.eye(t)
        a = a / a.sum(-1, keepdim=True)
        roll = a @ roll
    return roll[:, 0, 1:].reshape(n, 4, 4)


IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_rollout_equals_a_plain_reimplementation():
    model = _tiny_vit()
    raw = _run(
        model, IMAGES, _check_methods(("attention_rollout",)), target_layer=None, targets=None,
        reshape=None, scorecam_batch_size=8,
    )  # fmt: skip
    want = _plain_rollout(model, IMAGES)
    got = raw.layer_maps["attention_rollout"]
    assert got.shape == (2, 4, 4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # Not trivially uniform: the hand-set weights make some patches matter more.
    assert float(want.max() / want.min()) > 1.05


def test_rollout_contract_and_model_left_as_it_was():
    model = _tiny_vit().train()
    exp = explain(model, IMAGES, methods=("attention_rollout", "gradcam"))
    out = exp.maps["attention_rollout"]
    assert out.shape == (2, 32, 32) and out.dtype == torch.float32
    assert (out >= 0).all() and torch.isfinite(out).all()
    assert exp.layer_shape == (4, 4)
    assert model.training
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name
    # The block still asks its attention for no weights: the model is unchanged.
    with torch.no_grad():
        again = model.eval()(IMAGES)
    torch.testing.assert_close(again, exp.logits)


def test_rollout_on_vit_b_16_sums_to_one_over_tokens():
    # Each rolled-out row is a distribution over the 197 tokens: the class token's row over
    # the 196 patches sums to at most 1 and the grid is vit_b_16's 14 x 14.
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, num_classes=4).eval()
    raw = _run(
        model, IMAGES.new_zeros(1, 3, 224, 224).normal_(generator=torch.Generator().manual_seed(0)),
        _check_methods(("attention_rollout",)), target_layer=None, targets=None, reshape=None,
        scorecam_batch_size=8,
    )  # fmt: skip
    m = raw.layer_maps["attention_rollout"]
    assert m.shape == (1, 14, 14)
    assert 0 < float(m.sum()) < 1


def test_rollout_needs_attention_layers(resnet18, images64):
    with pytest.raises(ModelError, match="attention_rollout.*MultiheadAttention"):
        explain(resnet18, images64, methods=("attention_rollout",))


def test_rollout_needs_a_token_layer():
    model = _tiny_vit()
    with pytest.raises(ModelError, match="conv_proj.*not a token layer"):
        explain(model, IMAGES, methods=("attention_rollout",), target_layer="conv_proj")
