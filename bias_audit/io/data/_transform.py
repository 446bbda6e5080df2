"""One geometric transform shared by an image and all of its masks and boxes.

The geometry (scale, placement, flip) is planned once per sample from the image's size. Every
output pixel centre ``x + 0.5`` maps to the source coordinate ``(x - ox + 0.5) * W / rw``: the
bilinear resize of the image (``align_corners=False``) uses exactly this mapping, and masks and
boxes are sampled at the same coordinates (nearest neighbour), so a mask pixel lands where its
image pixel lands, for any aspect ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Geometry", "plan_geometry", "transform_image", "transform_mask", "transform_box"]

#: Largest extra zoom of the augmentation (1.15 = up to 15% larger before cropping).
_AUG_ZOOM = 0.15
#: Largest shift of the augmentation's crop, as a share of the output size.
_AUG_SHIFT = 0.08


@dataclass(frozen=True)
class Geometry:
    """Where a ``width x height`` source lands in a ``size x size`` output.

    The source is resized to ``rw x rh`` and its top-left corner placed at ``(ox, oy)`` of the
    output (negative when cropping, positive when letterboxing); then flipped if ``flip``.
    """

    width: int
    height: int
    size: int
    rw: int
    rh: int
    ox: int
    oy: int
    flip: bool = False


def plan_geometry(
    width: int,
    height: int,
    size: int,
    resize: str,
    *,
    generator: torch.Generator | None = None,
) -> Geometry:
    """Plan the resize + centre crop (``"crop"``) or letterbox of one image.

    With a ``generator``, adds the training augmentation: a random zoom of up to 15%, a crop
    shifted by up to 8% of ``size`` and a horizontal flip with probability 1/2.
    """
    fit = min if resize == "crop" else max
    scale = size / fit(width, height)
    if generator is not None:
        scale *= 1.0 + _AUG_ZOOM * float(torch.rand((), generator=generator))
    rw = max(1, round(width * scale))
    rh = max(1, round(height * scale))
    if resize == "crop":
        # Rounding must never leave a strip of padding in crop mode.
        rw, rh = max(rw, size), max(rh, size)
    elif generator is None:
        rw, rh = min(rw, size), min(rh, size)
    ox, oy = (size - rw) // 2, (size - rh) // 2
    flip = False
    if generator is not None:
        ox = _jitter(ox, rw, size, generator)
        oy = _jitter(oy, rh, size, generator)
        flip = bool(torch.rand((), generator=generator) < 0.5)
    return Geometry(width=width, height=height, size=size, rw=rw, rh=rh, ox=ox, oy=oy, flip=flip)


def _jitter(offset: int, extent: int, size: int, generator: torch.Generator) -> int:
    shift = max(1, round(_AUG_SHIFT * size))
    delta = int(torch.randint(-shift, shift + 1, (), generator=generator))
    # Keep the image covering the output in crop mode, and inside it in letterbox mode.
    lo, hi = min(0, size - extent), max(0, size - extent)
    return min(max(offset + delta, lo), hi)


def transform_image(image: Tensor, geometry: Geometry, mean: Tensor, std: Tensor) -> Tensor:
    """Resize (bilinear, antialiased), normalise, then place and flip an image.

    Args:
        image: (3, H, W) uint8, or float in [0, 1].
        geometry: from :func:`plan_geometry` for this image's size.
        mean, std: (3,) normalisation.

    Returns:
        (3, S, S) float32; letterbox padding is 0, i.e. the mean colour.
    """
    g = geometry
    if image.dtype == torch.uint8:
        # torch's uint8 channels-last kernel is ~9x faster than float on CPU; its rounding
        # to whole levels (< 1/255) is far below what a classifier notices.
        pixels = image[None].contiguous(memory_format=torch.channels_last)
        resized = (
            F.interpolate(
                pixels, size=(g.rh, g.rw), mode="bilinear", align_corners=False, antialias=True
            )[0]
            .float()
            .div_(255.0)
        )
    else:
        resized = F.interpolate(
            image[None].float(), size=(g.rh, g.rw), mode="bilinear", align_corners=False,
            antialias=True,
        )[0]  # fmt: skip
    resized = (resized - mean[:, None, None]) / std[:, None, None]
    out = resized.new_zeros((image.shape[0], g.size, g.size))
    (dy0, dy1, sy0, sy1), (dx0, dx1, sx0, sx1) = (
        _window(g.oy, g.rh, g.size),
        _window(g.ox, g.rw, g.size),
    )
    out[:, dy0:dy1, dx0:dx1] = resized[:, sy0:sy1, sx0:sx1]
    return out.flip(-1) if g.flip else out


def _window(offset: int, extent: int, size: int) -> tuple[int, int, int, int]:
    """Destination [d0, d1) and source [s0, s1) of a placement along one axis."""
    d0, d1 = max(0, offset), min(size, offset + extent)
    return d0, d1, d0 - offset, d1 - offset


def _source_coords(geometry: Geometry, axis: str) -> tuple[np.ndarray, int, int]:
    """Source coordinates of the output pixel centres inside the placed image, along one axis."""
    g = geometry
    offset, extent, source = (g.ox, g.rw, g.width) if axis == "x" else (g.oy, g.rh, g.height)
    d0, d1, s0, s1 = _window(offset, extent, g.size)
    coords = (np.arange(s0, s1, dtype=np.float64) + 0.5) * (source / extent)
    return coords, d0, d1


def transform_mask(mask: np.ndarray, geometry: Geometry) -> Tensor:
    """Nearest-neighbour transform of a (h, w) bool mask, of any size, into (S, S) bool.

    A mask whose size differs from the image's is stretched onto the image first: sampling
    relative coordinates does both steps at once.
    """
    g = geometry
    h, w = mask.shape
    xs, dx0, dx1 = _source_coords(g, "x")
    ys, dy0, dy1 = _source_coords(g, "y")
    cols = np.minimum((xs * (w / g.width)).astype(np.int64), w - 1)
    rows = np.minimum((ys * (h / g.height)).astype(np.int64), h - 1)
    out = np.zeros((g.size, g.size), dtype=bool)
    out[dy0:dy1, dx0:dx1] = mask[np.ix_(rows, cols)]
    t = torch.from_numpy(out)
    return t.flip(-1) if g.flip else t


def transform_box(box: tuple[float, float, float, float], geometry: Geometry) -> Tensor:
    """Rasterise a box ``(x0, y0, x1, y1)`` in source pixels (x1, y1 exclusive) into (S, S) bool.

    An output pixel is inside when its centre's source coordinate is in [x0, x1) x [y0, y1):
    the same answer as rasterising the box at the source size and calling
    :func:`transform_mask`, without allocating a source-sized mask.
    """
    g = geometry
    x0, y0, x1, y1 = box
    xs, dx0, dx1 = _source_coords(g, "x")
    ys, dy0, dy1 = _source_coords(g, "y")
    # For integer bounds, x0 <= xs < x1 is exactly x0 <= floor(xs) < x1: transform_mask's test.
    inx = (xs >= x0) & (xs < x1)
    iny = (ys >= y0) & (ys < y1)
    out = np.zeros((g.size, g.size), dtype=bool)
    out[dy0:dy1, dx0:dx1] = iny[:, None] & inx[None, :]
    t = torch.from_numpy(out)
    return t.flip(-1) if g.flip else t
