"""ReLU backward rules for guided backprop and deconvnet.

While a guided method is requested, every ``nn.ReLU`` module's output is replaced (by a
forward hook) with :class:`_RuledReLU` of its input. Its backward follows ``rule.mode``:

- ``"plain"``: the ordinary ReLU gradient, ``g * (x > 0)``; used for the layer gradient, so the
  Grad-CAM family is the same with or without a guided method in the call;
- ``"guided"``: ``relu(g) * (x > 0)`` (Springenberg et al. 2015);
- ``"deconvnet"``: ``relu(g)``, whatever the forward input was (Zeiler & Fergus 2014).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Rule:
    """Mutable switch read by every ruled ReLU during backward."""

    mode: str = "plain"


class _RuledReLU(torch.autograd.Function):
    # ctx is Any as in torch.autograd.Function: the attributes set on it are ours.
    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: Rule) -> Tensor:
        ctx.rule = rule
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        mode = ctx.rule.mode
        if mode == "deconvnet":
            return grad.clamp(min=0), None
        if mode == "guided":
            grad = grad.clamp(min=0)
        return grad * (x > 0).to(grad.dtype), None


def ruled_relu(x: Tensor, rule: Rule) -> Tensor:
    out: Tensor = _RuledReLU.apply(x, rule)
    return out
