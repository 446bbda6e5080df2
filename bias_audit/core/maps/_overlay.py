"""Map helpers for reports: per-image normalisation and colour overlays (no matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from bias_audit.errors import ConfigError, DataError

# viridis sampled at 9 evenly spaced points; linear interpolation between them is
# indistinguishable from the full table at overlay opacity.
_VIRIDIS = (
    np.array(
        [
            [68, 1, 84],
            [71, 44, 122],
            [59, 81, 139],
            [44, 113, 142],
            [33, 144, 141],
            [39, 173, 129],
            [92, 200, 99],
            [170, 220, 50],
            [253, 231, 37],
        ],
        dtype=np.float64,
    )
    / 255.0
)


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each map of a batch to [0, 1].

    Args:
        maps: (N, ...) float, e.g. (N, H, W) or (N, C, H, W); each image is scaled on its own.

    Returns:
        Same shape, float. A constant map (all zero included) becomes all zero; a map holding
        NaN stays NaN.
    """
    if not isinstance(maps, Tensor) or maps.ndim < 2:
        raise DataError("maps: expected a tensor (N, ...) with a batch dimension")
    flat = maps.float().flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    out = torch.where(span > 0, (flat - low) / torch.where(span > 0, span, 1.0), 0.0)
    out = torch.where(torch.isnan(span), torch.nan, out)
    return out.reshape(maps.shape)


def _colormap(values: npt.NDArray[np.float64], name: str) -> npt.NDArray[np.float64]:
    """values in [0, 1] (H, W) -> RGB floats (H, W, 3) in [0, 1]."""
    if name == "jet":
        # The piecewise-linear jet: each channel is a clipped tent centred a quarter apart.
        centres = np.array([0.75, 0.5, 0.25])
        tents: npt.NDArray[np.float64] = np.clip(
            1.5 - np.abs(4 * values[..., None] - 4 * centres), 0, 1
        )
        return tents
    if name == "viridis":
        pos = values * (len(_VIRIDIS) - 1)
        lo = np.clip(np.floor(pos).astype(int), 0, len(_VIRIDIS) - 2)
        frac = (pos - lo)[..., None]
        mixed: npt.NDArray[np.float64] = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac
        return mixed
    raise ConfigError(f"colormap: unknown {name!r}; valid: 'jet', 'viridis'")


def overlay(
    image: Tensor | Image.Image,
    map: Tensor,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Image.Image:
    """Blend a coloured map over an image.

    Args:
        image: (3, H, W) float tensor, normalised with ``mean``/``std`` if given, else in [0, 1];
            or a PIL image.
        map: (H, W) or (1, H, W) map, any scale; min-max normalised here. Resized bilinearly if
            its size differs from the image's. NaN is drawn as 0.
        alpha: opacity of the map, in [0, 1].
        colormap: "jet" or "viridis".
        mean, std: per-channel normalisation to undo on a tensor image.

    Returns:
        An RGB PIL image of the image's size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha: expected a value in [0, 1], got {alpha!r}")
    if isinstance(image, Image.Image):
        rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    elif isinstance(image, Tensor) and image.ndim == 3 and image.shape[0] == 3:
        img = image.detach().float().cpu()
        if mean is not None or std is not None:
            m = torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0))[:, None, None]
            s = torch.tensor(std if std is not None else (1.0, 1.0, 1.0))[:, None, None]
            img = img * s + m
        rgb = img.clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float64)
    else:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise DataError(f"image: expected a (3, H, W) tensor or a PIL image, got {got}")
    flat_ok = isinstance(map, Tensor) and (map.ndim == 2 or (map.ndim == 3 and map.shape[0] == 1))
    if not flat_ok:
        got = tuple(map.shape) if isinstance(map, Tensor) else type(map).__name__
        raise DataError(f"map: expected an (H, W) or (1, H, W) tensor, got {got}")
    m2 = torch.nan_to_num(map.detach().float().cpu().reshape(1, 1, *map.shape[-2:]), nan=0.0)
    h, w = rgb.shape[:2]
    if tuple(m2.shape[-2:]) != (h, w):
        m2 = F.interpolate(m2, size=(h, w), mode="bilinear", align_corners=False)
    values = normalize_maps(m2[0]).reshape(h, w).numpy().astype(np.float64)
    heat = _colormap(values, colormap)
    out = (1 - alpha) * rgb + alpha * heat
    return Image.fromarray(np.round(out * 255).clip(0, 255).astype(np.uint8), mode="RGB")
