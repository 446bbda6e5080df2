"""explain_layers: several layers from one forward and one backward pass, the same maps as one
explain call per layer."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from bias_audit.core.maps import explain, explain_layers
from bias_audit.errors import ConfigError, ModelError
from tests.explain.test_contract import _check_restored, _prepare

LAYERS = ["layer4", "layer3", "layer2"]
# Score-CAM reads the same layer output as the others and costs N x K forward passes: left out.
METHODS = (
    "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "counterfactual", "guided_gradcam",
)  # fmt: skip


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=4).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(1))


def test_each_layer_equals_its_own_explain_call(resnet, images):
    targets = torch.tensor([0, 3, 1])
    together = explain_layers(resnet, images, METHODS, layers=LAYERS, targets=targets)
    assert list(together) == LAYERS
    for layer in LAYERS:
        alone = explain(resnet, images, METHODS, target_layer=layer, targets=targets)
        got = together[layer]
        assert got.target_layer == layer and got.layer_shape == alone.layer_shape
        assert torch.equal(got.targets, alone.targets)
        torch.testing.assert_close(got.logits, alone.logits, rtol=0, atol=1e-5)
        for m in METHODS:
            a, b = got.maps[m], alone.maps[m]
            scale = float(b.abs().max())
            assert scale > 0, (layer, m)  # a map of zeros would prove nothing
            assert float((a - b).abs().max()) <= 1e-5 * scale, (layer, m)


def test_one_forward_and_one_gradient_call_for_all_layers(resnet, images, grad_calls):
    forwards = []
    handle = resnet.register_forward_hook(lambda *_: forwards.append(1))
    try:
        explain_layers(resnet, images, ("gradcam", "gradcam++", "layercam"), layers=LAYERS)
    finally:
        handle.remove()
    assert (len(forwards), len(grad_calls)) == (1, 1)


def test_no_graph_before_the_earliest_layer(resnet, images):
    seen: dict[str, bool] = {}
    handles = [
        getattr(resnet, name).register_forward_hook(
            lambda _m, _a, out, name=name: seen.__setitem__(name, out.requires_grad)
        )
        for name in ("layer1", "layer2", "layer3", "layer4")
    ]
    try:
        explain_layers(resnet, images, "gradcam", layers=["layer4", "layer3"])
    finally:
        for h in handles:
            h.remove()
    # layer3's hook is registered after ours, so ours sees its original output
    assert seen == {"layer1": False, "layer2": False, "layer3": False, "layer4": True}


def test_flags_and_hooks_are_restored_also_on_error():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    state = _prepare(model)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = explain_layers(model, images, ("gradcam", "guided_gradcam"), layers=LAYERS)
    assert set(out) == set(LAYERS)
    _check_restored(model, state)
    # 'cam' needs the GAP + linear head right after the layer: layer3 fails, as alone
    with pytest.raises(ModelError, match="'layer3'"):
        explain_layers(model, images, "cam", layers=["layer4", "layer3"])
    _check_restored(model, state)


def test_bad_layers_are_named(resnet, images):
    with pytest.raises(ConfigError, match="layers"):
        explain_layers(resnet, images, layers=[])
    with pytest.raises(ConfigError, match="layers"):
        explain_layers(resnet, images, layers="layer4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="layer9"):
        explain_layers(resnet, images, layers=["layer4", "layer9"])
    # a repeated layer counts once; None is the automatic layer (layer4)
    assert list(explain_layers(resnet, images, layers=[None, "layer4", "layer3"])) == [
        "layer4",
        "layer3",
    ]
