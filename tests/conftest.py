"""Shared fixtures. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores, two xdist workers: one thread each keeps them from fighting.
torch.set_num_threads(int(os.environ.get("BIAS_AUDIT_TEST_THREADS", "1")))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def grad_calls(monkeypatch) -> list[int]:
    """Counts the ``torch.autograd.grad`` calls made from here on (one entry per call)."""
    calls: list[int] = []
    real = torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    return calls
