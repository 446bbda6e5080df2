"""Tiny GAP + linear CNNs for the audit tests, built through the ``pkg.module:factory`` path."""

from __future__ import annotations

import os
import time

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv -> conv(stride 2) -> GAP -> linear; ``features`` is the CAM layer (S/2 x S/2)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
            nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class SlowNet(TinyNet):
    """TinyNet that sleeps per forward pass (``BIAS_AUDIT_TEST_DELAY`` seconds), so a test can
    kill a run in the middle."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(float(os.environ.get("BIAS_AUDIT_TEST_DELAY", "0")))
        return super().forward(x)


def build(num_classes: int) -> nn.Module:
    return TinyNet(num_classes)


def build_slow(num_classes: int) -> nn.Module:
    return SlowNet(num_classes)
