"""One contract over every method: shapes, values, and no trace left on the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bias_audit.core.maps import METHODS, explain, resolve_target_layer

GUIDED = {"guided_backprop", "deconvnet", "guided_gradcam"}


def _prepare(model: nn.Module) -> dict:
    """Put the model in a state explain must give back: train mode, a frozen and a
    pre-filled parameter, and a user hook of its own."""
    model.train()
    model.layer1.eval()  # mixed flags, so "restore" cannot mean "all train"
    model.fc.bias.requires_grad_(False)
    model.conv1.weight.grad = torch.full_like(model.conv1.weight, 0.5)
    return {
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "inplace": {n: m.inplace for n, m in model.named_modules() if isinstance(m, nn.ReLU)},
        "grad": model.conv1.weight.grad,
    }


def _check_restored(model: nn.Module, state: dict) -> None:
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name
        assert not module._backward_hooks, name
        assert not getattr(module, "_backward_pre_hooks", {}), name
        assert module.training == state["training"][name], name
    assert {n: m.inplace for n, m in model.named_modules() if isinstance(m, nn.ReLU)} == state[
        "inplace"
    ]
    for name, p in model.named_parameters():
        assert p.requires_grad == state["requires_grad"][name], name
        if name == "conv1.weight":
            assert p.grad is state["grad"]
            assert torch.equal(p.grad, torch.full_like(p, 0.5))
        else:
            assert p.grad is None, name


@pytest.fixture
def model():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=4)


# The attention methods need a ViT: their contract is checked in test_attention.py.
CNN_METHODS = tuple(m for m in METHODS if not m.startswith("attention_"))


@pytest.mark.parametrize("method", CNN_METHODS)
def test_contract(model, method):
    state = _prepare(model)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images.requires_grad_(True)
    images.grad = torch.ones_like(images)
    # layer3 (2x2 here) rather than layer4 (1x1) so the maps have structure; Score-CAM then
    # runs 2 x 256 masked passes. CAM needs the GAP + linear head right after its layer.
    layer, shape = ("layer4", (1, 1)) if method == "cam" else ("layer3", (2, 2))
    exp = explain(model, images, methods=(method,), target_layer=layer, scorecam_batch_size=256)
    out = exp.maps[method]
    expected = (2, 3, 32, 32) if method in GUIDED else (2, 32, 32)
    assert tuple(out.shape) == expected
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if method not in GUIDED:
        assert (out >= 0).all()
    assert not out.requires_grad
    assert exp.logits.shape == (2, 4) and not exp.logits.requires_grad
    assert exp.targets.dtype == torch.long and exp.targets.shape == (2,)
    torch.testing.assert_close(exp.targets, exp.logits.argmax(1))
    assert exp.target_layer == layer and exp.layer_shape == shape
    assert torch.equal(images.grad, torch.ones_like(images))
    _check_restored(model, state)
    with pytest.raises(TypeError):
        exp.maps[method] = out  # read-only mapping


@pytest.mark.parametrize("method", METHODS)
def test_contract_after_an_error_in_the_pass(model, method):  # rollout included: it fails first
    state = _prepare(model)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def broken_target(output):
        raise RuntimeError("boom from the target")

    with pytest.raises(RuntimeError, match="boom from the target"):
        explain(model, images, methods=(method,), target_layer="layer3", targets=broken_target)
    _check_restored(model, state)


def test_no_graph_before_the_target_layer(model):
    model.eval()
    seen = {}

    def record(name):
        def hook(_m, _a, out):
            seen[name] = out.requires_grad

        return hook

    handles = [
        model.layer2.register_forward_hook(record("layer2")),
        model.fc.register_forward_hook(record("fc")),
    ]
    calls = []
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # The layout probe (one image, once per model and input shape) is cached after this call.
    resolve_target_layer(model, "layer3", images, None)
    handles.append(model.register_forward_pre_hook(lambda *_: calls.append(1)))
    try:
        explain(model, images, methods=("gradcam", "gradcam++", "layercam"), target_layer="layer3")
    finally:
        for h in handles:
            h.remove()
    assert seen == {"layer2": False, "fc": True}
    assert len(calls) == 1  # one forward pass for three maps


def test_saved_activation_survives_an_inplace_op_after_the_layer(model):
    # target = the conv before an in-place ReLU: the map must use the pre-ReLU values.
    model.eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    exp = explain(model, images, methods=("hirescam",), target_layer="layer3.1.bn2")
    leaf = {}

    def swap(_m, _a, out):
        leaf["a"] = out.detach().clone().requires_grad_(True)
        return leaf["a"] * 1.0  # downstream in-place ops act on this product, not on the leaf

    h = model.layer3[1].bn2.register_forward_hook(swap)
    try:
        logits = model(images)
    finally:
        h.remove()
    a = leaf["a"]
    (g,) = torch.autograd.grad(logits.gather(1, exp.targets[:, None]).sum(), a)
    model.zero_grad(set_to_none=True)
    assert (a < 0).any()  # values an in-place ReLU would have zeroed in a shared tensor
    ref = (g * a).sum(1, keepdim=True).clamp(min=0).detach()
    ref = torch.nn.functional.interpolate(ref, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(exp.maps["hirescam"], ref[:, 0])


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_works_under_no_grad_and_inference_tensors(model, mode):
    model.eval()
    with torch.inference_mode():
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        targets = model(images).argmax(1)
    expected = explain(model, images.clone(), ("gradcam",), targets=targets.clone())
    with getattr(torch, mode)():
        exp = explain(model, images, ("gradcam", "guided_backprop"), targets=targets)
    assert exp.maps["gradcam"].max() > 0
    torch.testing.assert_close(exp.maps["gradcam"], expected.maps["gradcam"])


@pytest.mark.parametrize(
    ("methods", "calls"),
    [
        (("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "counterfactual"), 1),
        (("cam",), 0),
        (("gradcam", "guided_gradcam"), 2),  # the layer gradient, then the guided one
        (("guided_backprop", "deconvnet"), 2),  # one per ReLU rule, no layer gradient
    ],
)
def test_one_backward_per_gradient(model, grad_calls, methods, calls):
    model.eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    explain(model, images, methods, target_layer="layer4")
    assert len(grad_calls) == calls
