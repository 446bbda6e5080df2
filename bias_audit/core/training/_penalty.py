"""Differentiable attention penalties for "right for the right reasons" training.

Both penalties keep the autograd graph (``create_graph=True``) so that the optimiser can
move the parameters to take attention out of the confounder regions. The Grad-CAM maps are
the explain engine's own (:func:`bias_audit.core.maps.gradcam`), at a layer chosen by its
resolver (:func:`bias_audit.core.maps.resolve_target_layer`): what is penalised is what
the audit measures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from bias_audit.core.maps import Reshape, gradcam, layer_output, to_grid
from bias_audit.errors import ConfigError

__all__ = ["gradcam_evidence_mass", "gradcam_mass", "input_grad_energy"]


def _coverage(region: Tensor, shape: tuple[int, int], window: int) -> Tensor:
    """(N,S,S) bool -> (N,h,w): the share of each layer cell's neighbourhood in the region.

    ``window`` 1 is the cell's own footprint (area pooling). A larger odd window averages
    over the window x window cells around it, zero outside the image: a deep cell sees far
    beyond its footprint, so a coat cell beside the hair still encodes the hair.
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 1 or window % 2 == 0:
        raise ConfigError(f"penalty_window: expected an odd integer >= 1, got {window!r}")
    cover = F.adaptive_avg_pool2d(region[:, None].float(), shape)
    if window > 1:
        cover = F.avg_pool2d(cover, window, stride=1, padding=window // 2)
    return cover[:, 0]


def gradcam_mass(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    region: Tensor,
    *,
    target_layer: str,
    window: int = 1,
    reshape: Reshape | None = None,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM of the true class and its share of mass inside ``region``, differentiably.

    The map is Grad-CAM at the layer's resolution: M = ReLU(Σ_k α_k A^k), α_k the spatial mean
    of ∂S/∂A^k with S = logit_label - mean_c logit_c (the label's margin). ``region`` is
    down-sampled to the layer's (h, w) by area averaging, which gives each layer cell the
    fraction of it covered by the region; that is cheaper than up-sampling the map and
    keeps the gradient at the layer's resolution.

    Args:
        images: (N,3,S,S). labels: (N,) long.
        region: (N,S,S) bool, the union of the confounder regions.
        target_layer: dotted module name.
        window: odd; each cell's coverage is the region's share of the window x window
            cells around it (1: the cell itself). See ``_coverage``.

    Returns:
        ``(logits (N,C), mass (N,))``; mass is in [0,1] and 0 where the map is all zero.
    """
    logits, out, acts = _forward_capturing(model, images, target_layer, reshape)
    # The label's margin over the mean logit, not its raw logit: a shortcut used through
    # another class's logit (a red spot lowering "ring") must count as attention too.
    score = (logits.gather(1, labels[:, None])[:, 0] - logits.mean(dim=1)).sum()
    grads = _grid_grad(score, out, reshape, target_layer)
    cam = gradcam(acts, grads)  # (N,h,w)
    cover = _coverage(region, (cam.shape[-2], cam.shape[-1]), window)
    # The epsilon keeps an all-zero map at mass 0 (no gradient) instead of NaN.
    mass = (cam * cover).sum(dim=(1, 2)) / (cam.sum(dim=(1, 2)) + 1e-8)
    return logits, mass


def gradcam_evidence_mass(
    model: nn.Module,
    images: Tensor,
    region: Tensor,
    *,
    target_layer: str,
    window: int = 1,
    reshape: Reshape | None = None,
) -> tuple[Tensor, Tensor]:
    """Share of every class's absolute Grad-CAM evidence inside ``region``, differentiably.

    For each class c the unrectified map is G_c = Σ_k α_k^c A^k, α^c the spatial mean of
    ∂S_c/∂A^k with S_c = logit_c - mean_j logit_j (class c's margin). The penalty is the
    share of |G_c| inside the region, averaged over the classes. The absolute value is the
    point: a ReLU'd label map (:func:`gradcam_mass`) can be emptied inside the region while
    the confounder still drives the prediction through negative evidence (the hair lowering
    the *other* class) or through cells the ReLU hides; |G_c| counts evidence for and against
    every class. On the nurse/doctor case study only this form debiased the model (see
    ``case_studies/nurse_doctor/FEASIBILITY.md``).

    Costs one extra backward pass per class (with ``create_graph``), so it suits models with
    a handful of classes.

    Args:
        images: (N,3,S,S).
        region: (N,S,S) bool, the union of the confounder regions; area-averaged to the
            layer's (h, w) as in :func:`gradcam_mass`.
        target_layer: dotted module name.
        window: odd neighbourhood, in layer cells, of each cell's coverage (see ``_coverage``).

    Returns:
        ``(logits (N,C), mass (N,))``; mass is in [0,1], 0 where every map is all zero.
    """
    logits, out, acts = _forward_capturing(model, images, target_layer, reshape)
    cover = _coverage(region, (acts.shape[-2], acts.shape[-1]), window)
    margins = logits - logits.mean(dim=1, keepdim=True)
    n_classes = logits.shape[1]
    mass = logits.new_zeros(len(logits))
    for c in range(n_classes):
        grads = _grid_grad(margins[:, c].sum(), out, reshape, target_layer)
        cam = gradcam(acts, grads, rectify=False).abs()  # (N,h,w)
        mass = mass + (cam * cover).sum(dim=(1, 2)) / (cam.sum(dim=(1, 2)) + 1e-8)
    return logits, mass / n_classes


def input_grad_energy(model: nn.Module, images: Tensor, region: Tensor) -> tuple[Tensor, Tensor]:
    """Ross et al.'s RRR penalty ‖A ⊙ ∂_x Σ_k log p_k‖² per image, A = ``region``.

    Args:
        images: (N,3,S,S). region: (N,S,S) bool, broadcast over the channels.

    Returns:
        ``(logits (N,C), energy (N,))``.
    """
    x = images.detach().requires_grad_(True)
    logits = model(x)
    log_p = F.log_softmax(logits, dim=1)
    (grads,) = torch.autograd.grad(log_p.sum(), x, create_graph=True)
    energy = ((region[:, None].to(grads.dtype) * grads) ** 2).sum(dim=(1, 2, 3))
    return logits, energy


def _grid_grad(score: Tensor, out: Tensor, reshape: Reshape | None, target_layer: str) -> Tensor:
    """d score / d (the layer output as a grid), kept in the graph. Taken at the raw output and
    reshaped: the score depends on the output, not on the grid view made from it (a token
    layer's class token is dropped, a channels-last one permuted)."""
    (grad,) = torch.autograd.grad(score, out, create_graph=True)
    return to_grid(grad, reshape, target_layer)


def _forward_capturing(
    model: nn.Module, images: Tensor, target_layer: str, reshape: Reshape | None
) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, the target layer's raw output, that output as (N, C, h, w)) of one pass, all
    kept in the graph."""
    module = model.get_submodule(target_layer)
    captured: list[object] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        # The penalty differentiates a gradient: the fused attention kernels have no double
        # backward on CPU, the math one (the same attention, in plain ops) has.
        with sdpa_kernel(SDPBackend.MATH):
            logits = model(images)
    finally:
        handle.remove()
    if not captured:
        raise ConfigError(f"target_layer {target_layer!r} was not called during the forward pass")
    out = layer_output(captured[-1], target_layer)
    # The same check and reshape as explain's; the reshape is differentiable (views, permutes).
    return logits, out, to_grid(out, reshape, target_layer)
