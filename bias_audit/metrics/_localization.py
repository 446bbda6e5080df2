"""Localisation metrics: how much of a saliency map falls inside a region.

Every function takes ``maps`` (N, H, W) >= 0 first and ``masks`` (N, H, W) bool (or ``boxes``
(N, 4)) second, returns a float32 tensor (N,), and gives NaN, never a score, for a degenerate
input: a map that is all zero or not finite, or an empty region. The definitions are those of
``docs/readme/metrics.md``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ..errors import DataError

__all__ = [
    "area_fraction",
    "attention_mass",
    "boxes_from_masks",
    "lift",
    "localization_iou",
    "map_boxes",
    "pointing_game",
    "rank_accuracy",
]

_NAN = float("nan")


def _check_maps(maps: Tensor, name: str = "maps") -> Tensor:
    if not isinstance(maps, Tensor) or maps.ndim != 3:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise DataError(f"{name}: expected a tensor (N, H, W), got {shape}")
    if not maps.is_floating_point():
        raise DataError(f"{name}: expected a float tensor, got {maps.dtype}")
    if bool((maps < 0).any()):
        raise DataError(f"{name}: maps must be >= 0 (apply ReLU or normalise first)")
    return maps


def _check_masks(masks: Tensor, maps: Tensor | None = None, name: str = "masks") -> Tensor:
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise DataError(f"{name}: expected a bool tensor (N, H, W), got {shape}")
    if masks.dtype != torch.bool:
        raise DataError(f"{name}: expected a bool tensor, got {masks.dtype}")
    if maps is not None and masks.shape != maps.shape:
        raise DataError(
            f"{name}: shape {tuple(masks.shape)} does not match maps {tuple(maps.shape)}"
        )
    return masks


def _valid_maps(maps: Tensor) -> Tensor:
    """(N,) bool: the map has a positive, finite total, so a share of it is defined."""
    total = maps.sum(dim=(1, 2))
    return torch.isfinite(total) & (total > 0)


def attention_mass(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of each map's mass inside its mask: ``sum(M * R) / sum(M)``.

    Quantus calls this "relevance mass accuracy"; with a box as the region it is the
    "energy-based pointing game".

    Args:
        maps: (N, H, W) float >= 0.
        masks: (N, H, W) bool.

    Returns:
        (N,) float32 in [0, 1]; NaN where the map is all zero (or not finite) or the mask is empty.
    """
    _check_maps(maps)
    _check_masks(masks, maps)
    return _mass(maps, masks, _valid_maps(maps))


def _mass(maps: Tensor, masks: Tensor, valid: Tensor) -> Tensor:
    total = maps.sum(dim=(1, 2))
    inside = (maps * masks).sum(dim=(1, 2))
    out = (inside / total.clamp_min(torch.finfo(maps.dtype).tiny)).float()
    bad = ~valid | ~masks.flatten(1).any(dim=1)
    return out.masked_fill(bad, _NAN)


def area_fraction(masks: Tensor) -> Tensor:
    """Share of the image a mask covers: ``|R| / (H * W)``.

    Args:
        masks: (N, H, W) bool.

    Returns:
        (N,) float32 in [0, 1]. An empty mask gives 0, not NaN: its size is known.
    """
    _check_masks(masks)
    return masks.flatten(1).float().mean(dim=1)


def lift(maps: Tensor, masks: Tensor) -> Tensor:
    """Attention mass divided by area fraction.

    1 is what a uniform map scores; above 1 the map concentrates on the region.

    Args:
        maps: (N, H, W) float >= 0.
        masks: (N, H, W) bool.

    Returns:
        (N,) float32 >= 0; NaN where the attention mass is NaN (all-zero map, empty mask).
    """
    return attention_mass(maps, masks) / area_fraction(masks)


def _descending_order(maps: Tensor) -> Tensor:
    # A stable sort makes ties deterministic: equal values keep raster (row-major) order,
    # so among tied pixels the upper-left ones rank first.
    return torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices


def _rank_from_order(order: Tensor, masks: Tensor, valid: Tensor) -> Tensor:
    hits = torch.gather(masks.flatten(1), 1, order)  # mask values in the map's rank order
    k = hits.sum(dim=1)
    # cumsum in int32 then pick the count among the first K ranks, with K = |R| per sample.
    within = hits.to(torch.int32).cumsum(dim=1)
    top_k = torch.gather(within, 1, (k - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
    out = top_k.float() / k.clamp_min(1).float()
    return out.masked_fill(~valid | (k == 0), _NAN)


def rank_accuracy(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of the K highest-valued pixels that lie in the mask, with K = |R|.

    Ties are broken by raster order (row-major): among equal values the pixel with the
    smaller flat index ranks higher. A uniform map therefore ranks the top rows first.

    Args:
        maps: (N, H, W) float >= 0.
        masks: (N, H, W) bool.

    Returns:
        (N,) float32 in [0, 1]; NaN where the map is all zero (or not finite) or the mask is empty.
    """
    _check_maps(maps)
    _check_masks(masks, maps)
    return _rank_from_order(_descending_order(maps), masks, _valid_maps(maps))


def _argmax_yx(maps: Tensor) -> tuple[Tensor, Tensor]:
    # torch.argmax returns the first maximal index, i.e. the first maximum in raster order.
    flat = torch.argmax(maps.flatten(1), dim=1)
    width = maps.shape[-1]
    return flat // width, flat % width


def _pointing(maps: Tensor, masks: Tensor, valid: Tensor, tolerance: float) -> Tensor:
    ys, xs = _argmax_yx(maps)
    if tolerance <= 0:
        hit = masks[torch.arange(maps.shape[0]), ys, xs]
    else:
        h, w = maps.shape[-2:]
        yy = torch.arange(h).view(1, h, 1)
        xx = torch.arange(w).view(1, 1, w)
        disk = (yy - ys.view(-1, 1, 1)) ** 2 + (xx - xs.view(-1, 1, 1)) ** 2 <= tolerance**2
        hit = (disk & masks).flatten(1).any(dim=1)
    out = hit.float()
    return out.masked_fill(~valid | ~masks.flatten(1).any(dim=1), _NAN)


def pointing_game(maps: Tensor, masks: Tensor, *, tolerance: float = 0.0) -> Tensor:
    """1.0 if the map's maximum lies in the mask, else 0.0 (Zhang et al. 2016).

    When several pixels share the maximum, the first in raster order is the one that points.
    Zhang et al. count a hit when the maximum is within 15 px of the region; pass
    ``tolerance=15`` for that (a Euclidean disk around the maximum must touch the mask).

    Args:
        maps: (N, H, W) float >= 0.
        masks: (N, H, W) bool.
        tolerance: radius in pixels; 0 means the maximum itself must be inside.

    Returns:
        (N,) float32 of 0/1; NaN where the map is all zero (or not finite) or the mask is empty.
        Unlike Quantus, an empty mask is never a hit.
    """
    _check_maps(maps)
    _check_masks(masks, maps)
    if not tolerance >= 0:
        raise DataError(f"tolerance: expected a number >= 0, got {tolerance!r}")
    return _pointing(maps, masks, _valid_maps(maps), float(tolerance))


def boxes_from_masks(masks: Tensor) -> Tensor:
    """Bounding box of each mask as ``x0 y0 x1 y1``, with x1 and y1 exclusive.

    Args:
        masks: (N, H, W) bool.

    Returns:
        (N, 4) float32; a row of NaN for an empty mask.
    """
    _check_masks(masks)
    return _boxes(masks)


def _boxes(masks: Tensor) -> Tensor:
    h, w = masks.shape[-2:]
    rows = masks.any(dim=2).to(torch.uint8)  # (N, H)
    cols = masks.any(dim=1).to(torch.uint8)  # (N, W)
    y0 = rows.argmax(dim=1)
    x0 = cols.argmax(dim=1)
    y1 = h - rows.flip(1).argmax(dim=1)
    x1 = w - cols.flip(1).argmax(dim=1)
    out = torch.stack([x0, y0, x1, y1], dim=1).float()
    return out.masked_fill(~rows.bool().any(dim=1, keepdim=True), _NAN)


def map_boxes(maps: Tensor, *, threshold: float = 0.15) -> Tensor:
    """Box of each map's largest blob, as in the Grad-CAM paper's localisation protocol.

    The map is binarised at ``threshold * max`` (pixels >= that value), the largest
    8-connected component is kept (on a tie in size, the one whose first pixel comes first in
    raster order) and boxed. This is the only metric that loops over samples, because
    connected components need ``scipy.ndimage.label``.

    Args:
        maps: (N, H, W) float >= 0.
        threshold: share of each map's own maximum, in (0, 1].

    Returns:
        (N, 4) float32 ``x0 y0 x1 y1`` (exclusive ends); NaN rows for all-zero or non-finite maps.
    """
    _check_maps(maps)
    if not 0 < threshold <= 1:
        raise DataError(f"threshold: expected a share in (0, 1], got {threshold!r}")
    return _map_boxes(maps, threshold, _valid_maps(maps))


_EIGHT = np.ones((3, 3), dtype=bool)


def _map_boxes(maps: Tensor, threshold: float, valid: Tensor) -> Tensor:
    peak = maps.flatten(1).amax(dim=1).view(-1, 1, 1)
    binary = (maps >= threshold * peak) & valid.view(-1, 1, 1)
    arr = binary.cpu().numpy()
    out = np.full((arr.shape[0], arr.shape[1], arr.shape[2]), False)
    for i in np.flatnonzero(valid.cpu().numpy()):
        labels, count = ndimage.label(arr[i], structure=_EIGHT)
        if count <= 1:
            out[i] = labels > 0
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        out[i] = labels == int(np.argmax(sizes))
    return _boxes(torch.from_numpy(out))


def _check_boxes(boxes: Tensor, n: int) -> Tensor:
    if not isinstance(boxes, Tensor) or boxes.shape != (n, 4):
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise DataError(f"boxes: expected a tensor ({n}, 4) as x0 y0 x1 y1, got {shape}")
    boxes = boxes.float()
    known = ~boxes.isnan().any(dim=1)
    inverted = known & ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if bool(inverted.any()):
        row = int(torch.nonzero(inverted)[0])
        raise DataError(f"boxes: row {row} has x1 < x0 or y1 < y0: {boxes[row].tolist()}")
    return boxes


def _box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of paired boxes (N, 4) with exclusive ends; NaN when either box is NaN."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    out = inter / union.clamp_min(1e-12)
    # NaN in either box propagates through the arithmetic; a zero union means two empty boxes.
    return out.masked_fill(union <= 0, _NAN)


def localization_iou(maps: Tensor, boxes: Tensor, *, threshold: float = 0.15) -> Tensor:
    """IoU between the box of the map's largest blob and the region's box (Grad-CAM §4.1).

    See :func:`map_boxes` for the binarisation. The paper counts a localisation as correct
    when this IoU is >= 0.5.

    Args:
        maps: (N, H, W) float >= 0.
        boxes: (N, 4) float ``x0 y0 x1 y1`` with exclusive ends; a NaN row means no region.
        threshold: share of each map's own maximum, in (0, 1].

    Returns:
        (N,) float32 in [0, 1]; NaN where the map is all zero (or not finite) or the box is NaN.
    """
    _check_maps(maps)
    boxes = _check_boxes(boxes, maps.shape[0])
    return _box_iou(map_boxes(maps, threshold=threshold), boxes)
