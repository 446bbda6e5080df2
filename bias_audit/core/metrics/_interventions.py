"""Occlusion: causal evidence that a region drives a prediction, beyond where attention falls."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from bias_audit.core.maps import fast_layout
from bias_audit.errors import ConfigError, DataError, ModelError

__all__ = ["FILLS", "Occlusion", "occlusion_effect", "random_patches"]

#: Ways to replace the occluded pixels.
FILLS: tuple[str, ...] = ("blur", "mean")

_NAN = float("nan")


@dataclass(frozen=True, kw_only=True)
class Occlusion:
    """Effect of occluding each of K masks, and of a random patch of the same area.

    Every field is (N, K) float32 and NaN where the mask is empty (or absent).

    Attributes:
        drop_logit: clean target logit minus occluded target logit (> 0: the region helped).
        drop_prob: the same for the softmax probability of the target.
        flip: 1.0 where the predicted class changes under occlusion, else 0.0.
        drop_logit_random, drop_prob_random, flip_random: the same for a random patch with
            the mask's pixel count (the baseline); NaN everywhere when ``baseline=False``.
    """

    drop_logit: Tensor
    drop_prob: Tensor
    flip: Tensor
    drop_logit_random: Tensor
    drop_prob_random: Tensor
    flip_random: Tensor


def _fill_image(images: Tensor, fill: str) -> Tensor:
    if fill == "mean":
        # Each image's own per-channel mean: for normalised input this is not zero, and it
        # keeps the image's overall colour so the occluder is not itself a strong signal.
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    # A strong blur removes shape and texture but keeps local colour. sigma is 5% of the
    # shorter side, 11 px at 224, close to the sigma = 10 of Fong & Vedaldi's (2017) blur
    # perturbation; the kernel spans +-2 sigma.
    sigma = max(1.0, 0.05 * min(images.shape[-2:]))
    size = 2 * math.ceil(2 * sigma) + 1
    size = min(size, 2 * (min(images.shape[-2:]) // 2) - 1)
    blurred: Tensor = TF.gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])
    return blurred


def random_patches(masks: Tensor, *, seed: int = 0) -> Tensor:
    """A random rectangle with the same pixel count as each mask, at a seeded position.

    The rectangle is as square as fits: ``h = min(H, max(ceil(sqrt(A)), ceil(A / W)))`` rows
    and ``w = ceil(A / h)`` columns, with the last column filled only partly so the count is
    exactly ``A``. Its top-left corner is uniform over the positions where it fits; the patch
    may overlap the mask itself.

    Args:
        masks: (N, K, H, W) bool.
        seed: seed of the positions.

    Returns:
        (N, K, H, W) bool; empty where the mask is empty.
    """
    n, k, h, w = masks.shape
    area = masks.flatten(2).sum(dim=2)  # (N, K)
    a = area.double()
    # Square when it fits; otherwise as many rows as needed to stay within the width.
    rows = torch.maximum(torch.ceil(torch.sqrt(a)), torch.ceil(a / w)).clamp(1, h).long()
    cols = torch.ceil(a / rows).clamp(1, w).long()
    rest = area - rows * (cols - 1)  # pixels of the last, partial column
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(2, n, k, generator=gen, dtype=torch.float64)
    y0 = torch.floor(u[0] * (h - rows + 1)).long()
    x0 = torch.floor(u[1] * (w - cols + 1)).long()
    yy = torch.arange(h).view(1, 1, h, 1)
    xx = torch.arange(w).view(1, 1, 1, w)
    y0, x0, rows, cols, rest = (t[..., None, None] for t in (y0, x0, rows, cols, rest))
    in_rows = (yy >= y0) & (yy < y0 + rows)
    full = in_rows & (xx >= x0) & (xx < x0 + cols - 1)
    last = (xx == x0 + cols - 1) & (yy >= y0) & (yy < y0 + rest)
    return (full | last) & (area > 0)[..., None, None]


def _effects(
    model: nn.Module, images: Tensor, fill: Tensor, masks: Tensor, targets: Tensor, clean: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    n, k = masks.shape[:2]
    rows = torch.arange(n)
    clean_logit = clean[rows, targets]
    clean_prob = clean.softmax(dim=1)[rows, targets]
    clean_pred = clean.argmax(dim=1)
    drop_logit = torch.full((n, k), _NAN)
    drop_prob = torch.full((n, k), _NAN)
    flip = torch.full((n, k), _NAN)
    for j in range(k):
        m = masks[:, j]
        todo = m.flatten(1).any(dim=1)
        if not bool(todo.any()):
            continue
        # Only images with a non-empty mask are run: an empty mask changes nothing.
        idx = torch.nonzero(todo).squeeze(1)
        sel = m[idx, None].to(images.device)
        occluded = fast_layout(model, torch.where(sel, fill[idx], images[idx]))
        out = model(occluded).float().cpu()
        drop_logit[idx, j] = clean_logit[idx] - out[torch.arange(len(idx)), targets[idx]]
        drop_prob[idx, j] = (
            clean_prob[idx] - out.softmax(dim=1)[torch.arange(len(idx)), targets[idx]]
        )
        flip[idx, j] = (out.argmax(dim=1) != clean_pred[idx]).float()
    return drop_logit, drop_prob, flip


def occlusion_effect(
    model: nn.Module,
    images: Tensor,
    masks: Tensor,
    targets: Tensor,
    *,
    fill: str = "blur",
    logits: Tensor | None = None,
    baseline: bool = True,
    seed: int = 0,
) -> Occlusion:
    """Replace each mask's pixels and measure how the target logit, probability and prediction move.

    Cost: one forward pass of the images with a non-empty mask for each of the K masks, and as
    many again for the random-patch baseline, plus one clean pass unless ``logits`` is given;
    with ``fill="blur"`` one blur of the batch. Peak memory is one batch of occluded images.
    Runs under ``torch.inference_mode()`` with the model in eval mode; its training flag is
    restored afterwards, also on error.

    Args:
        model: classifier returning logits (N, C).
        images: (N, C_in, H, W) float, as the model takes them (normalised).
        masks: (N, K, H, W) bool, one mask per region or role.
        targets: (N,) long, class whose logit and probability are tracked.
        fill: ``"blur"`` (a strong Gaussian blur of the image, sigma = 5% of the shorter side)
            or ``"mean"`` (each image's own per-channel mean).
        logits: (N, C) logits of the clean images if already computed; then not recomputed.
        baseline: also occlude a random patch of the same pixel count (see
            :func:`random_patches`).
        seed: seed of the random patches.

    Returns:
        :class:`Occlusion` with (N, K) fields; NaN where a mask is empty.
    """
    if fill not in FILLS:
        raise ConfigError(f"fill: expected one of {FILLS}, got {fill!r}")
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise DataError(f"images: expected a float tensor (N, C, H, W), got {shape}")
    n, _, h, w = images.shape
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool or masks.ndim != 4:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise DataError(f"masks: expected a bool tensor (N, K, H, W), got {shape}")
    if masks.shape[0] != n or masks.shape[-2:] != (h, w):
        raise DataError(f"masks: shape {tuple(masks.shape)} does not fit images {(n, h, w)}")
    targets = torch.as_tensor(targets).cpu().long()
    if targets.shape != (n,):
        raise DataError(f"targets: expected shape ({n},), got {tuple(targets.shape)}")
    masks = masks.cpu()

    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            clean = model(fast_layout(model, images)) if logits is None else logits
            clean = clean.detach().float().cpu()
            if clean.ndim != 2 or clean.shape[0] != n:
                name = "logits" if logits is not None else "model output"
                raise ModelError(f"{name}: expected (N={n}, C), got {tuple(clean.shape)}")
            if bool(((targets < 0) | (targets >= clean.shape[1])).any()):
                raise DataError(f"targets: class index outside [0, {clean.shape[1]})")
            filled = _fill_image(images, fill)
            effects = _effects(model, images, filled, masks, targets, clean)
            if baseline:
                patches = random_patches(masks, seed=seed)
                rand = _effects(model, images, filled, patches, targets, clean)
            else:
                rand = (
                    torch.full_like(effects[0], _NAN),
                    torch.full_like(effects[1], _NAN),
                    torch.full_like(effects[2], _NAN),
                )
    finally:
        model.train(training)
    # clone() outside inference mode gives ordinary tensors the caller may edit in place.
    return Occlusion(
        drop_logit=effects[0].clone(),
        drop_prob=effects[1].clone(),
        flip=effects[2].clone(),
        drop_logit_random=rand[0].clone(),
        drop_prob_random=rand[1].clone(),
        flip_random=rand[2].clone(),
    )
