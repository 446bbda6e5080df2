"""One small weight function per gradient-based CAM variant (formulas: REFERENCES.md).

Each takes the layer activation ``A`` and the gradient ``g`` of the score, both (N, K, h, w),
and returns weights that broadcast against ``A``: (N, K, 1, 1) per channel or (N, K, h, w) per
position. The map is then ``relu(sum_k weights * A)``.

Weights and sums run in :func:`compute_dtype` of the activation (float32 at least): in float16
the squared and cubed gradients of Grad-CAM++ round to zero and the spatial sums overflow.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
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


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precisions, float64 kept: the precision weights and sums are taken in."""
    return torch.promote_types(dtype, torch.float32)


def weighted_map(act: Tensor, weights: Tensor, *, rectify: bool = True) -> Tensor:
    """relu(sum_k weights * act): (N, h, w), in :func:`compute_dtype`; unrectified if not
    ``rectify``. Differentiable: the training penalty backpropagates through it."""
    work = compute_dtype(act.dtype)
    total = (weights.to(work) * act.to(work)).sum(dim=1)
    # relu, not clamp: at an exact zero relu passes no gradient (the penalty relies on it).
    return F.relu(total) if rectify else total


def gradcam(act: Tensor, grad: Tensor, *, rectify: bool = True) -> Tensor:
    """Grad-CAM from a layer activation and the score's gradient there, both (N, K, h, w).

    ``relu(sum_k mean_hw(grad_k) * act_k)``: (N, h, w) in :func:`compute_dtype`. The one
    Grad-CAM of the package: :func:`explain` calls it without a graph, the attention penalty
    with ``grad`` from ``autograd.grad(..., create_graph=True)`` so the map stays
    differentiable in the parameters. ``rectify=False`` keeps the signed evidence.
    """
    work = compute_dtype(act.dtype)
    act, grad = act.to(work), grad.to(work)
    return weighted_map(act, _gradcam(act, grad), rectify=rectify)
