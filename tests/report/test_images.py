from __future__ import annotations

import base64
import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from bias_audit.report._images import (
    REGION_COLORS,
    data_uri,
    draw_outlines,
    jet,
    overlay_map,
    thumbnail,
)


def test_jet_hand_values() -> None:
    np.testing.assert_allclose(
        jet(np.array([0.0, 0.5, 1.0])), [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]]
    )
    np.testing.assert_allclose(jet(np.array([np.nan])), jet(np.array([0.0])))


def test_jet_close_to_matplotlib() -> None:
    v = np.linspace(0, 1, 257)
    ref = matplotlib.colormaps["jet"](v)[:, :3]
    # matplotlib's breakpoints are 0.11/0.34/0.65/0.89, ours 1/8, 3/8, 5/8, 7/8.
    assert np.abs(jet(v) - ref).max() < 0.15


def test_overlay_matches_hand_blend() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    heat = rng.uniform(0, 3, (6, 5)).astype(np.float32)
    scaled = (heat - heat.min()) / (heat.max() - heat.min())
    expected = np.rint(0.6 * image + 0.4 * 255 * jet(scaled)).astype(np.uint8)
    np.testing.assert_array_equal(overlay_map(image, heat, alpha=0.4), expected)


@pytest.mark.parametrize("fill", [0.0, np.nan, 2.0])
def test_overlay_without_signal_keeps_image(fill: float) -> None:
    image = np.full((4, 4, 3), 77, dtype=np.uint8)
    out = overlay_map(image, np.full((4, 4), fill, dtype=np.float32))
    np.testing.assert_array_equal(out, image)


def test_overlay_resizes_map() -> None:
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    heat = np.array([[0.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    out = overlay_map(image, heat, alpha=1.0)
    assert out.shape == (16, 16, 3)
    # The hot corner is bottom-right: red there, blue-ish top-left.
    assert out[15, 15, 0] > 100 and out[15, 15, 2] == 0
    assert out[0, 0, 2] > 100 and out[0, 0, 0] == 0


def test_outlines_square() -> None:
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 3:8, 3:8] = True  # 5x5: 16 boundary pixels, 3x3 interior
    masks[1, 0:2, 0:10] = True  # touches the image edge: all 20 pixels are boundary
    out = draw_outlines(image, masks)
    first = np.all(out == REGION_COLORS[0], axis=-1)
    second = np.all(out == REGION_COLORS[1], axis=-1)
    assert first.sum() == 16 and not first[4:7, 4:7].any()
    assert second.sum() == 20
    assert (out[~(masks[0] | masks[1])] == 0).all()


def test_thumbnail_caps_longer_side() -> None:
    big = thumbnail(np.zeros((200, 400, 3), dtype=np.uint8), max_side=160)
    assert big.size == (160, 80)
    small = thumbnail(np.zeros((50, 100, 3), dtype=np.uint8), max_side=160)
    assert small.size == (100, 50)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_data_uri_roundtrip(fmt: str) -> None:
    pic = thumbnail(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    uri = data_uri(pic, fmt=fmt)
    head, payload = uri.split(",", 1)
    assert head == f"data:image/{fmt};base64"
    decoded = Image.open(io.BytesIO(base64.b64decode(payload)))
    assert decoded.format == fmt.upper() and decoded.size == (40, 30)


def test_data_uri_bad_format() -> None:
    with pytest.raises(ValueError, match="fmt"):
        data_uri(Image.new("RGB", (2, 2)), fmt="gif")
