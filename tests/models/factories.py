"""A factory importable as 'tests.models.factories:tiny_mlp' (the pkg.module:factory form)."""

from torch import nn


def tiny_mlp(num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 8 * 8, 5), nn.ReLU(), nn.Linear(5, num_classes)
    )


def not_a_module(num_classes: int) -> int:
    return num_classes
