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


def _plain_attention_gradient(model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The tiny ViT's forward written out by hand, the attention weights as explicit tensors,
    their gradients from torch autograd; then Chefer et al.'s rule (ICCV 2021, self-attention):
    R = I, R += mean_h relu(grad * A) @ R per block, the class token's row over the patches."""
    n, heads = images.shape[0], 2
    x = model.conv_proj(images.requires_grad_(True)).flatten(2).transpose(1, 2)
    x = torch.cat([model.class_token.expand(n, -1, -1), x], dim=1) + model.encoder.pos_embedding
    t, d = x.shape[1:]
    attns = []
    for layer in model.encoder.layers:
        mha = layer.self_attention
        q, k, v = (
            (layer.ln_1(x) @ w.T + b).reshape(n, t, heads, d // heads).transpose(1, 2)
            for w, b in zip(mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3), strict=True)
        )
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        attns.append(attn)
        out = (attn @ v).transpose(1, 2).reshape(n, t, d)
        x = x + out @ mha.out_proj.weight.T + mha.out_proj.bias
        x = x + layer.mlp(layer.ln_2(x))
    logits = model.heads(model.encoder.ln(x)[:, 0])
    with torch.no_grad():
        torch.testing.assert_close(logits, model(images))  # the hand-written forward is the model
    grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), attns)
    rel = torch.eye(t).expand(n, t, t)
    for attn, grad in zip(attns, grads, strict=True):
        rel = rel + (grad * attn).clamp(min=0).mean(dim=1) @ rel
    return rel[:, 0, 1:].reshape(n, 4, 4).detach()


def _layer_maps(model, methods, targets=None):
    return _run(
        model, IMAGES, _check_methods(methods), target_layer=None, targets=targets,
        reshape=None, scorecam_batch_size=8,
    ).layer_maps  # fmt: skip


@pytest.mark.parametrize("targets", [[0, 2], [1, 1]])
def test_attention_gradient_equals_a_plain_reimplementation(targets):
    model = _tiny_vit()
    t = torch.tensor(targets)
    got = _layer_maps(model, ("attention_gradient",), t)["attention_gradient"]
    want = _plain_attention_gradient(model, IMAGES.clone(), t)
    assert got.shape == (2, 4, 4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert float(want.max()) > 0 and float(want.max() - want.min()) > 1e-3 * float(want.max())


def test_attention_gradient_is_class_specific_where_rollout_is_not():
    model = _tiny_vit()
    maps = [
        _layer_maps(model, ("attention_gradient", "attention_rollout", "gradcam"),
                    torch.tensor([c, c]))
        for c in (0, 2)
    ]  # fmt: skip
    torch.testing.assert_close(maps[0]["attention_rollout"], maps[1]["attention_rollout"])
    a, b = maps[0]["attention_gradient"], maps[1]["attention_gradient"]
    assert float((a - b).abs().max()) > 0.05 * float(torch.maximum(a, b).max())
    # Asking for it leaves the other maps as they were without it.
    alone = _layer_maps(model, ("gradcam", "attention_rollout"), torch.tensor([2, 2]))
    torch.testing.assert_close(maps[1]["gradcam"], alone["gradcam"])
    torch.testing.assert_close(maps[1]["attention_rollout"], alone["attention_rollout"])


def test_attention_gradient_contract_and_model_left_as_it_was():
    model = _tiny_vit().train()
    exp = explain(model, IMAGES, methods=("attention_gradient", "guided_gradcam"))
    out = exp.maps["attention_gradient"]
    assert out.shape == (2, 32, 32) and out.dtype == torch.float32
    assert (out >= 0).all() and torch.isfinite(out).all()
    assert model.training and not any(p.grad is not None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(IMAGES), exp.logits)


def test_attention_gradient_needs_attention_layers(resnet18, images64):
    with pytest.raises(ModelError, match="attention_gradient.*MultiheadAttention"):
        explain(resnet18, images64, methods=("attention_gradient",))
