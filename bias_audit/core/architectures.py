"""Build an untrained classifier by name: torchvision, "pkg.module:factory" or smallcnn."""

from __future__ import annotations

import difflib
import importlib
import re

import torch
import torchvision
from torch import nn
from torchvision.models import VisionTransformer

from bias_audit.errors import ModelError

__all__ = ["SmallCNN", "build_model", "list_archs"]

_SMALLCNN = re.compile(r"^smallcnn(?:_w(\d+))?$")
# A ViT small enough to train from scratch on a CPU in minutes: 96 px in 8 px patches (12 x 12).
VIT_TINY = "vit_tiny_p8"


class SmallCNN(nn.Module):
    """A small CAM-ready classifier for 64-128 px images.

    Four conv/BN/ReLU stages; the last one (``features``) works at 1/8 of the input
    resolution (96 px -> 12x12), followed by global average pooling and one linear layer,
    so CAM, Grad-CAM and the attention penalty all apply to ``features``.

    Args:
        num_classes: outputs of the final linear layer.
        width: channels of the first stage; later stages use 2x and 4x.

    Shapes: input (N, 3, H, W) -> logits (N, num_classes).
    """

    def __init__(self, num_classes: int, *, width: int = 32) -> None:
        super().__init__()
        w = width

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            # ReLU is not in-place: hooks on ``features`` must see activations nothing rewrites.
            return [
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            *block(3, w, 2),  # 1/2
            *block(w, w, 1),
            *block(w, 2 * w, 2),  # 1/4
            *block(2 * w, 2 * w, 1),
            *block(2 * w, 4 * w, 2),  # 1/8
            *block(4 * w, 4 * w, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(torch.flatten(self.pool(self.features(x)), 1))
        return logits


def list_archs() -> list[str]:
    """Every built-in architecture name: "smallcnn" and torchvision's classification models."""

    return ["smallcnn", VIT_TINY, *torchvision.models.list_models(module=torchvision.models)]


def build_model(arch: str, *, num_classes: int) -> nn.Module:
    """Build an untrained classifier (randomly initialised; nothing is ever downloaded).

    Args:
        arch: one of
            - ``"smallcnn"`` (or ``"smallcnn_w<width>"``, e.g. ``"smallcnn_w8"`` for tests),
            - ``"vit_tiny_p8"``: a torchvision ``VisionTransformer`` for 96 px inputs only
              (patch 8, a 12 x 12 grid, 2 layers, 2 heads, width 32),
            - a torchvision classification model name such as ``"resnet18"``, built with
              ``weights=None``,
            - ``"pkg.module:factory"``: ``factory(num_classes=num_classes)`` must return an
              ``nn.Module``.
        num_classes: number of outputs.

    Returns:
        The model in training mode, on the CPU.

    Raises:
        ModelError: unknown name (with the closest valid names), a factory that cannot be
            imported or does not return an ``nn.Module``, or a bad ``num_classes``.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ModelError(f"num_classes: expected a positive integer, got {num_classes!r}")
    if not isinstance(arch, str) or not arch.strip():
        raise ModelError(f"arch: expected a model name, got {arch!r}")
    arch = arch.strip()
    match = _SMALLCNN.match(arch)
    if match:
        width = int(match.group(1) or 32)
        if width < 1:
            raise ModelError(f"arch {arch!r}: the width must be at least 1")
        return SmallCNN(num_classes, width=width)
    if arch == VIT_TINY:
        vit: nn.Module = VisionTransformer(
            image_size=96, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
            num_classes=num_classes,
        )  # fmt: skip
        return vit
    if ":" in arch:
        return _build_from_factory(arch, num_classes)

    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        close = difflib.get_close_matches(arch.lower(), list_archs(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelError(
            f"arch {arch!r}: not 'smallcnn', a torchvision classification model or "
            f"'pkg.module:factory'{hint}"
        )
    try:
        model: nn.Module = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        return model
    except (TypeError, ValueError) as err:
        raise ModelError(f"arch {arch!r}: torchvision cannot build it: {err}") from err


def _build_from_factory(arch: str, num_classes: int) -> nn.Module:
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise ModelError(f"arch {arch!r}: expected 'pkg.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(f"arch {arch!r}: cannot import module {module_name!r}: {err}") from err
    factory = module
    for part in attr.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError as err:
            raise ModelError(f"arch {arch!r}: module {module_name!r} has no {attr!r}") from err
    if not callable(factory):
        raise ModelError(f"arch {arch!r}: {attr!r} is not callable")
    model = factory(num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"arch {arch!r}: the factory returned {type(model).__name__}, not a torch nn.Module"
        )
    return model
