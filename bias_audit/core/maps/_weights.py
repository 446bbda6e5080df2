"""One small weight function per gradient-based CAM variant (formulas: REFERENCES.md).

Each takes the layer activation ``A`` and the gradient ``g`` of the score, both (N, K, h, w),
and returns weights that broadcast against ``A``: (N, K, 1, 1) per channel or (N, K, h, w) per
position. The map is then ``relu(sum_k weights * A)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

WeightFn = Callable[[Tensor, Tensor], Tensor]


def _gradcam(act: Tensor, grad: Tensor) -> Tensor:
    return grad.mean(dim=(2, 3), keepdim=True)


def _counterfactual(act: Tensor, grad: Tensor) -> Tensor:
    return -grad.mean(dim=(2, 3), keepdim=True)


def _gradcampp(act: Tensor, grad: Tensor) -> Tensor:
    # Closed form for Y = exp(S): the exponential's higher derivatives are powers of g.
    g2 = grad.pow(2)
    g3 = g2 * grad
    denom = 2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, 1.0), 0.0)
    return (alpha * grad.clamp(min=0)).sum(dim=(2, 3), keepdim=True)


def _xgradcam(act: Tensor, grad: Tensor) -> Tensor:
    total = act.sum(dim=(2, 3), keepdim=True)
    share = torch.where(total != 0, act / torch.where(total != 0, total, 1.0), 0.0)
    return (share * grad).sum(dim=(2, 3), keepdim=True)


def _layercam(act: Tensor, grad: Tensor) -> Tensor:
    return grad.clamp(min=0)


def _hirescam(act: Tensor, grad: Tensor) -> Tensor:
    return grad


WEIGHTS: dict[str, WeightFn] = {
    "gradcam": _gradcam,
    "gradcam++": _gradcampp,
    "xgradcam": _xgradcam,
    "layercam": _layercam,
    "hirescam": _hirescam,
    "counterfactual": _counterfactual,
}


def weighted_map(act: Tensor, weights: Tensor) -> Tensor:
    """relu(sum_k weights * act): (N, h, w)."""
    return (weights * act).sum(dim=1).clamp(min=0)
