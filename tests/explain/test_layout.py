"""Channels-last input on the CPU: faster, the same maps, and never forced on a model whose code
needs NCHW storage."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from bias_audit.core.maps import explain, fast_layout
from bias_audit.core.metrics import occlusion_effect


class Flattens(nn.Module):
    """Flattens a 4 x 4 activation with ``view``, which NCHW storage alone allows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x).relu()
        return self.fc(a.view(a.shape[0], -1))


def test_a_resnet_gets_channels_last_input_and_keeps_its_weights():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fast = fast_layout(model, x)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous(memory_format=torch.channels_last)  # the caller's is untouched
    torch.testing.assert_close(fast, x, rtol=0, atol=0)
    assert all(p.is_contiguous() for p in model.parameters())  # the weights stay NCHW
    # The same logits as an NCHW pass, to float rounding.
    with torch.no_grad():
        plain = model(x)
    exp = explain(model, x)
    torch.testing.assert_close(exp.logits, plain, rtol=1e-4, atol=1e-5)


def test_a_model_that_needs_nchw_gets_its_images_as_they_are():
    torch.manual_seed(0)
    model = Flattens().eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        try:
            model(x.contiguous(memory_format=torch.channels_last))
            raised = False
        except RuntimeError:
            raised = True
    assert raised  # the premise: this model cannot run channels-last input
    assert fast_layout(model, x) is x
    exp = explain(model, x, target_layer="conv")
    with torch.no_grad():
        torch.testing.assert_close(exp.logits, model(x))
    masks = torch.zeros(3, 1, 16, 16, dtype=torch.bool)
    masks[:, :, :8, :8] = True
    occ = occlusion_effect(model, x, masks, exp.targets, fill="mean", baseline=False)
    assert torch.isfinite(occ.flip).all()


def test_other_inputs_pass_through():
    model = torchvision.models.resnet18(num_classes=2).eval()
    grey = torch.randn(2, 1, 32, 32)
    assert fast_layout(nn.Conv2d(1, 4, 3), grey) is grey
    tokens = torch.randn(2, 5, 8)
    assert fast_layout(model, tokens) is tokens
    ints = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    assert fast_layout(model, ints) is ints
