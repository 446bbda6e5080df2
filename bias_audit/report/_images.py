"""Gallery pictures: region outlines, heatmap overlays and compact data URIs.

The colormap and overlay are done here with numpy and PIL so that the report depends on
nothing above it but the run folder.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

__all__ = [
    "REGION_COLORS",
    "jet",
    "normalize_map",
    "overlay_map",
    "draw_outlines",
    "thumbnail",
    "data_uri",
]

#: Outline colours, cycled over regions (colour-blind-safe Okabe-Ito palette).
REGION_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (255, 255, 255),
)


def jet(values: np.ndarray) -> np.ndarray:
    """The classic "jet" colormap: values (...) in [0, 1] -> RGB floats (..., 3) in [0, 1].

    Each channel is a trapezoid over [0, 1]: blue peaks at 1/4, green at 1/2, red at 3/4.
    NaN is treated as 0.
    """
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0), 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.stack([red, green, blue], axis=-1)


def normalize_map(heatmap: np.ndarray) -> np.ndarray | None:
    """Min-max scale one map (h, w) to [0, 1]; ``None`` if it is all zero, constant or NaN."""
    m = np.asarray(heatmap, dtype=np.float64)
    finite = np.isfinite(m)
    if not finite.any():
        return None
    lo, hi = m[finite].min(), m[finite].max()
    if hi <= lo or hi <= 0:
        return None
    return np.where(finite, (m - lo) / (hi - lo), 0.0)


def overlay_map(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured map over an image.

    Args:
        image: uint8 (h, w, 3) RGB.
        heatmap: raw map (mh, mw), any non-negative scale; resized bilinearly to (h, w).
        alpha: weight of the colour layer.

    Returns:
        uint8 (h, w, 3). A map without signal (all zero, constant, NaN) leaves the image as is,
        so that "no attention" is not drawn as uniform blue attention.
    """
    image = np.asarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    m = np.asarray(heatmap, dtype=np.float32)
    if m.shape != (h, w):
        m = np.asarray(Image.fromarray(m, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    scaled = normalize_map(m)
    if scaled is None:
        return image.copy()
    blended = (1.0 - alpha) * image.astype(np.float64) + alpha * 255.0 * jet(scaled)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def draw_outlines(image: np.ndarray, masks: np.ndarray, *, width: int = 1) -> np.ndarray:
    """Draw each region's boundary on a copy of ``image``.

    Args:
        image: uint8 (h, w, 3).
        masks: bool (R, h, w); region r is drawn in ``REGION_COLORS[r % 8]``.
        width: boundary thickness in pixels.

    Returns:
        uint8 (h, w, 3): boundary pixels (in the mask, with a 4-neighbour outside it or on the
        image edge) recoloured; everything else unchanged.
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    for r, mask in enumerate(np.asarray(masks, dtype=bool)):
        edge = mask & ~_erode(mask, width)
        out[edge] = REGION_COLORS[r % len(REGION_COLORS)]
    return out


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    inner = mask.copy()
    for _ in range(steps):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (
            padded[1:-1, 1:-1]
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    return inner


def thumbnail(image: np.ndarray, *, max_side: int = 160) -> Image.Image:
    """uint8 (h, w, 3) -> PIL image whose longer side is at most ``max_side`` (never enlarged)."""
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB")
    scale = max_side / max(pil.size)
    if scale < 1:
        size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
        pil = pil.resize(size, Image.Resampling.LANCZOS)
    return pil


def data_uri(picture: Image.Image, *, fmt: str = "jpeg", quality: int = 80) -> str:
    """Encode as ``data:image/jpeg;base64,...`` (photos) or ``data:image/png`` (flat masks)."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        picture.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    elif fmt == "png":
        picture.save(buf, format="PNG", optimize=True)
    else:
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
