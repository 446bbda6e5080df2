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
