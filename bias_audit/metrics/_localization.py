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


def _check_maps(maps: Tensor, name: str = "maps") -> Tensor:
    if not isinstance(maps, Tensor) or maps.ndim != 3:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise DataError(f"{name}: expected a tensor (N, H, W), got {shape}")
    if not maps.is_floating_point():
        raise DataError(f"{name}: expected a float tensor, got {maps.dtype}")
    if (_values(maps) < 0).any():
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


# The work is done in numpy on zero-copy views of CPU tensors: its boolean reductions, argmax
# and value sort are 5-20x faster than torch's on one thread, which is what makes the metrics
# cheap next to the explain pass (see benchmarks/metrics_bench.py).


def _values(maps: Tensor) -> np.ndarray:
    """(N, H*W) float numpy view of the maps."""
    maps = maps.detach().cpu()
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.float()
    return maps.reshape(maps.shape[0], -1).numpy()


def _region(masks: Tensor) -> np.ndarray:
    """(N, H*W) bool numpy view of the masks."""
    masks = masks.detach().cpu()
    return masks.reshape(masks.shape[0], -1).numpy()


def _valid(values: np.ndarray) -> np.ndarray:
    """(N,) bool: the map has a positive, finite total, so a share of it is defined."""
    total = values.sum(axis=1)
    return np.isfinite(total) & (total > 0)


def _out(values: np.ndarray, nan: np.ndarray) -> Tensor:
    return torch.from_numpy(np.where(nan, np.nan, values).astype(np.float32))


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
    values, region = _values(maps), _region(masks)
    valid, count = _valid(values), np.count_nonzero(region, axis=1)
    return _out(_mass(values, region), ~valid | (count == 0))


def _mass(values: np.ndarray, region: np.ndarray, total: np.ndarray | None = None) -> np.ndarray:
    # numpy sums contiguous rows pairwise, accurate enough in float32 for 50k pixels.
    total = values.sum(axis=1) if total is None else total
    inside = (values * region).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inside.astype(np.float64) / total


def area_fraction(masks: Tensor) -> Tensor:
    """Share of the image a mask covers: ``|R| / (H * W)``.

    Args:
        masks: (N, H, W) bool.

    Returns:
        (N,) float32 in [0, 1]. An empty mask gives 0, not NaN: its size is known.
    """
    _check_masks(masks)
    region = _region(masks)
    return _out(np.count_nonzero(region, axis=1) / region.shape[1], np.zeros(len(region), bool))


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


def _ascending(values: np.ndarray) -> np.ndarray:
    """(N, H*W) each map's values sorted ascending; shared by every region's rank accuracy."""
    return np.sort(values, axis=1)


def _rank(values: np.ndarray, ascending: np.ndarray, region: np.ndarray) -> np.ndarray:
    """|top-K ∩ R| / K through the K-th largest value, with ties taken in raster order."""
    n, p = values.shape
    k = np.count_nonzero(region, axis=1)
    kth = ascending[np.arange(n), p - np.maximum(k, 1)][:, None]  # K-th largest value
    above = values > kth
    hits = np.count_nonzero(above & region, axis=1)
    # Pixels equal to the K-th value fill the remaining places in raster order.
    need = k - np.count_nonzero(above, axis=1)
    tied = values == kth
    tied_in = np.count_nonzero(tied & region, axis=1)
    partial = (tied_in > 0) & (np.count_nonzero(tied, axis=1) > need)
    hits = hits + np.where(partial, 0, np.minimum(tied_in, need))
    for i in np.flatnonzero(partial):  # only maps whose ties straddle the K-th place
        order = np.cumsum(tied[i])
        hits[i] += np.count_nonzero(tied[i] & region[i] & (order <= need[i]))
    return hits / np.maximum(k, 1)


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
    values, region = _values(maps), _region(masks)
    bad = ~_valid(values) | ~region.any(axis=1)
    return _out(_rank(values, _ascending(values), region), bad)


def _pointing(
    values: np.ndarray, argmax: np.ndarray, region: np.ndarray, width: int, tolerance: float
) -> np.ndarray:
    n = len(values)
    if tolerance <= 0:
        return region[np.arange(n), argmax].astype(np.float64)
    height = values.shape[1] // width
    ys, xs = argmax // width, argmax % width
    yy = np.arange(height).reshape(1, height, 1)
    xx = np.arange(width).reshape(1, 1, width)
    disk = (yy - ys.reshape(-1, 1, 1)) ** 2 + (xx - xs.reshape(-1, 1, 1)) ** 2 <= tolerance**2
    return (disk.reshape(n, -1) & region).any(axis=1).astype(np.float64)


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
    values, region = _values(maps), _region(masks)
    bad = ~_valid(values) | ~region.any(axis=1)
    # argmax returns the first maximum, i.e. the first in raster order.
    hit = _pointing(values, values.argmax(axis=1), region, maps.shape[-1], float(tolerance))
    return _out(hit, bad)


def boxes_from_masks(masks: Tensor) -> Tensor:
    """Bounding box of each mask as ``x0 y0 x1 y1``, with x1 and y1 exclusive.

    Args:
        masks: (N, H, W) bool.

    Returns:
        (N, 4) float32; a row of NaN for an empty mask.
    """
    _check_masks(masks)
    return torch.from_numpy(_boxes(masks.detach().cpu().numpy()).astype(np.float32))


def _boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float64 boxes, NaN rows for empty masks."""
    h, w = masks.shape[-2:]
    rows = masks.any(axis=2)  # (N, H)
    cols = masks.any(axis=1)  # (N, W)
    y0 = rows.argmax(axis=1)
    x0 = cols.argmax(axis=1)
    y1 = h - rows[:, ::-1].argmax(axis=1)
    x1 = w - cols[:, ::-1].argmax(axis=1)
    out = np.stack([x0, y0, x1, y1], axis=1).astype(np.float64)
    out[~rows.any(axis=1)] = np.nan
    return out


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
    _check_threshold(threshold)
    values = _values(maps)
    out = _map_boxes(values, maps.shape[-2:], threshold, _valid(values))
    return torch.from_numpy(out.astype(np.float32))


def _check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise DataError(f"threshold: expected a share in (0, 1], got {threshold!r}")


_EIGHT = np.ones((3, 3), dtype=bool)


def _map_boxes(
    values: np.ndarray, shape: tuple[int, int], threshold: float, valid: np.ndarray
) -> np.ndarray:
    peak = values.max(axis=1, keepdims=True)
    binary = ((values >= threshold * peak) & valid[:, None]).reshape(-1, *shape)
    blobs = np.zeros_like(binary)
    for i in np.flatnonzero(valid):
        labels, count = ndimage.label(binary[i], structure=_EIGHT)
        if count <= 1:
            blobs[i] = labels > 0
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        blobs[i] = labels == int(np.argmax(sizes))
    return _boxes(blobs)


def _check_boxes(boxes: Tensor, n: int) -> np.ndarray:
    if not isinstance(boxes, Tensor) or boxes.shape != (n, 4):
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise DataError(f"boxes: expected a tensor ({n}, 4) as x0 y0 x1 y1, got {shape}")
    arr = boxes.detach().cpu().double().numpy()
    known = ~np.isnan(arr).any(axis=1)
    inverted = known & ((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1]))
    if inverted.any():
        row = int(np.flatnonzero(inverted)[0])
        raise DataError(f"boxes: row {row} has x1 < x0 or y1 < y0: {arr[row].tolist()}")
    return arr


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired boxes (N, 4) with exclusive ends; NaN when either box is NaN."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = union - inter
    # NaN in either box propagates through the arithmetic; a zero union means two empty boxes.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, np.nan)


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
    arr = _check_boxes(boxes, maps.shape[0])
    _check_threshold(threshold)
    values = _values(maps)
    blob = _map_boxes(values, maps.shape[-2:], threshold, _valid(values))
    iou = _box_iou(blob, arr)
    return _out(iou, np.isnan(iou))
