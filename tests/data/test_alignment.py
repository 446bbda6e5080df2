"""Masks and boxes land where their image pixels land, for any aspect ratio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bias_audit.io.data import load_manifest

from .conftest import write_manifest, write_mask

SIZES = [(37, 23), (23, 37), (64, 16), (16, 64), (30, 30), (101, 47)]


def _boxes(w: int, h: int) -> list[tuple[int, int, int, int]]:
    # Inside, touching the left/top border, touching the right/bottom border, the whole image.
    return [
        (w // 4, h // 5, w // 2 + 3, h - h // 4),
        (0, 0, w // 3 + 1, h // 2),
        (w - w // 3, h - h // 3, w, h),
        (0, 0, w, h),
    ]


def _dilate(m: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(m.float()[None, None], 3, stride=1, padding=1)[0, 0].bool()


def _erode(m: torch.Tensor) -> torch.Tensor:
    return ~_dilate(~m)


@pytest.mark.parametrize("resize", ["crop", "letterbox"])
@pytest.mark.parametrize("augment", [False, True])
def test_box_and_mask_cover_the_drawn_rectangle(tmp_path, resize, augment):
    rows = []
    for i, (w, h) in enumerate(SIZES):
        for j, (x0, y0, x1, y1) in enumerate(_boxes(w, h)):
            pixels = np.zeros((h, w, 3), dtype=np.uint8)
            pixels[..., 2] = 255  # blue background; the box is red
            pixels[y0:y1, x0:x1] = (255, 0, 0)
            Image.fromarray(pixels).save(tmp_path / f"{i}_{j}.png")
            mask = np.zeros((h, w), dtype=bool)
            mask[y0:y1, x0:x1] = True
            write_mask(tmp_path / f"{i}_{j}_m.png", mask)
            rows.append(
                {
                    "image": f"{i}_{j}.png",
                    "label": "x",
                    "bbox:box": f"{x0} {y0} {x1} {y1}",
                    "mask:drawn": f"{i}_{j}_m.png",
                }
            )
    path = write_manifest(tmp_path, rows)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    ds = load_manifest(
        path, image_size=24, resize=resize, mean=mean, std=std, augment=augment, seed=3
    )
    plain = load_manifest(path, image_size=24, resize=resize, mean=mean, std=std)
    changed = nonempty = 0
    for k in range(len(ds)):
        s = ds[k]
        rgb = s.image * 0.25 + 0.5  # back to [0, 1]
        red = (rgb[0] > 0.5) & (rgb[2] < 0.5)
        box, drawn = s.masks["box"], s.masks["drawn"]
        # A box and the same box drawn as a mask at the image's size agree exactly.
        assert torch.equal(box, drawn), rows[k]
        nonempty += int(box.any())  # a centre crop may cut a border box away entirely
        # Inside the box: red, up to a 1-pixel boundary; outside it: never red.
        assert red[_erode(box)].all(), rows[k]
        assert not red[~_dilate(box)].any(), rows[k]
        content = (rgb[0] + rgb[2]) > 0.75  # red, blue or a blend of them at an edge
        if resize == "letterbox" and not augment:
            # The padding is exactly the mean colour (0 after normalisation) and outside masks.
            pad = ~_dilate(content)
            assert (s.image[:, pad] == 0).all()
            assert not box[pad].any()
        elif resize == "crop":
            assert content.all()  # crop mode never pads
        changed += int(not torch.equal(box, plain[k].masks["box"]))
    assert nonempty >= len(ds) - 4
    # The checks above held for augmented samples too, and augmentation did move the masks.
    assert (changed > len(ds) // 2) if augment else changed == 0


def test_hand_computed_geometry(tmp_path):
    # 40x20 image, S=10. crop: scale 1/2 -> 20x10, 5 columns cut each side. The left half of
    # the image (x < 20) covers output columns j with (j + 5 + 0.5) * 2 < 20, i.e. j <= 4.
    Image.new("RGB", (40, 20)).save(tmp_path / "a.png")
    path = write_manifest(tmp_path, [{"image": "a.png", "label": "x", "bbox:left": "0 0 20 20"}])
    crop = load_manifest(path, image_size=10, resize="crop")[0].masks["left"]
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[:, :5] = True
    assert torch.equal(crop, expected)
    # letterbox: scale 1/4 -> 10x5 placed at rows 2..6; the left half is columns 0..4.
    box = load_manifest(path, image_size=10, resize="letterbox")[0].masks["left"]
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[2:7, :5] = True
    assert torch.equal(box, expected)


def test_mask_of_another_size_is_stretched_onto_the_image(tmp_path):
    # A 10x5 mask for a 40x20 image: its left half marks the image's left half.
    Image.new("RGB", (40, 20)).save(tmp_path / "a.png")
    small = np.zeros((5, 10), dtype=bool)
    small[:, :5] = True
    write_mask(tmp_path / "m.png", small)
    path = write_manifest(
        tmp_path,
        [{"image": "a.png", "label": "x", "mask:left": "m.png", "bbox:ref": "0 0 20 20"}],
    )
    for resize in ("crop", "letterbox"):
        s = load_manifest(path, image_size=10, resize=resize)[0]
        assert torch.equal(s.masks["left"], s.masks["ref"])


@pytest.mark.parametrize("mode", ["1", "P", "I;16"])
def test_single_channel_mask_modes(tmp_path, mode):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    m = np.zeros((8, 8), dtype=np.uint8)
    m[2:5, 1:7] = 1
    Image.fromarray(m * 255, mode="L").convert(mode).save(tmp_path / "m.png")
    path = write_manifest(
        tmp_path, [{"image": "a.png", "label": "x", "mask:r": "m.png", "bbox:ref": "1 2 7 5"}]
    )
    s = load_manifest(path, image_size=8)[0]
    assert torch.equal(s.masks["r"], s.masks["ref"])


def test_augmentation_is_reproducible(small_manifest):
    ds = load_manifest(small_manifest, image_size=16, augment=True, seed=1)
    first = [ds[i] for i in range(len(ds))]
    again = [ds[i] for i in range(len(ds))]
    assert all(torch.equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    ds.set_epoch(1)
    other = [ds[i] for i in range(len(ds))]
    assert any(not torch.equal(a.image, b.image) for a, b in zip(first, other, strict=True))
    plain = load_manifest(small_manifest, image_size=16)
    assert any(not torch.equal(a.image, plain[i].image) for i, a in enumerate(first))
    # The global RNG is never used.
    state = torch.get_rng_state()
    ds[0]
    assert torch.equal(state, torch.get_rng_state())


def test_uint8_fast_path_matches_float_resize(gen):
    from bias_audit.io.data._transform import plan_geometry, transform_image

    image = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=gen)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    for resize in ("crop", "letterbox"):
        g = plan_geometry(53, 37, 16, resize)
        fast = transform_image(image, g, mean, std)
        ref = transform_image(image.float() / 255, g, mean, std)
        assert fast.dtype == torch.float32
        # uint8 rounding: at most one level, i.e. 1/255 before dividing by std
        assert (fast - ref).abs().max() <= 1.0 / 255 / 0.2 + 1e-6
