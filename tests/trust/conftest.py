"""The Clever-Hans watermark case, trained once per session (a few seconds on a CPU)."""

from __future__ import annotations

import pytest
import torch

from bias_audit.core.architectures import SmallCNN
from tests.trust.clever_hans import make_images, train

REGIONS = ("object", "watermark")
ROLES = {"causal": ("object",), "confounder": ("watermark",)}


@pytest.fixture(scope="session")
def hans() -> dict:
    """A SmallCNN that learned the watermark, and a seeded 64-image test sample."""
    torch.manual_seed(0)
    model = train(SmallCNN(2, width=16), make_images(512, seed=0), epochs=3)
    return {"model": model, **make_images(64, seed=1)}


@pytest.fixture(scope="session")
def resnet_hans() -> dict:
    """A torchvision resnet18 trained briefly on the same case (about 40 s on one core)."""
    import torchvision

    torch.manual_seed(0)
    model = train(torchvision.models.resnet18(num_classes=2), make_images(256, seed=0), epochs=2)
    return {"model": model, **make_images(32, seed=1)}
