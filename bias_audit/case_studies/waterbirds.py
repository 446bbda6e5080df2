"""Synthetic Waterbirds: the background shortcut of Sagawa et al. (ICLR 2020), reproducible.

Sagawa et al. pasted CUB bird photographs onto Places backgrounds: landbirds on land and
waterbirds on water in 95% of the training images, both combinations equally often in the test
set. ERM learned the background (worst group 72.6%); Group DRO learned the bird (91.4%).

Here both parts are drawn. Every image is first a *label map* (which part each pixel belongs
to), then coloured, so the masks match the image pixel for pixel.

Cues:
  * the place (the confounder) is the easy cue: the whole scene, land (greens and browns with
    grass strokes) or water (blues with wave lines), most of the image;
  * the bird type (the cause) is the hard one: a small bird whose type shows in its shape (a
    waterbird has a longer neck, a long flat bill and broad webbed feet; a landbird a short
    neck, a short pointed beak and thin feet) and, partly, in its colours, which overlap.

Regions: ``bird`` (every part of the bird) and ``scene`` (its exact complement: the land or
water). ``scene`` is what the audit's derived ``background`` role would be; it is annotated as a
region so that the audit can give it the confounder role, whose attention, occlusion and paired
tests the findings read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bias_audit.case_studies._generated import (
    check_generator_args,
    generate_once,
    png,
    resolve_counts,
    sample_rng,
    shuffled,
    write_manifest,
)
from bias_audit.errors import ConfigError

__all__ = [
    "CLASSES",
    "GENERATOR_VERSION",
    "PLACES",
    "REGIONS",
    "ROLES",
    "SKEW",
    "SPLITS",
    "Cues",
    "Scene",
    "default_counts",
    "draw_scene",
    "generate",
    "region_masks",
]

CLASSES: tuple[str, ...] = ("landbird", "waterbird")
PLACES: tuple[str, ...] = ("land", "water")
REGIONS: tuple[str, ...] = ("bird", "scene")
#: The audit's roles for this case study: what should and should not decide the label.
ROLES: dict[str, tuple[str, ...]] = {"causal": ("bird",), "confounder": ("scene",)}
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: train: the share of each class drawn on its own place (Sagawa et al.: 95%).
SKEW = 0.95
#: The place where each class usually lives.
HOME = {"landbird": "land", "waterbird": "water"}

#: Bumped whenever a change to the drawing changes the bytes written for a given seed.
GENERATOR_VERSION = 3

# label-map values: the scene, then the bird's parts
_SCENE, _SCENE_MARK = 0, 1
_BODY, _WING, _HEAD, _BILL, _LEGS, _EYE = 2, 3, 4, 5, 6, 7
_BIRD_LABELS = (_BODY, _WING, _HEAD, _BILL, _LEGS, _EYE)

_COUNTS = {
    False: {"train": 2400, "val": 80, "test": 400},
    True: {"train": 2400, "val": 40, "test": 160},
}

_LAND = ((96, 140, 60), (120, 150, 70), (140, 120, 70), (80, 120, 50), (150, 140, 90))
_WATER = ((50, 100, 170), (40, 120, 160), (70, 130, 190), (30, 90, 140), (60, 140, 170))
# shared plumage colours (either type) and each type's own
_SHARED = ((110, 110, 110), (200, 200, 200), (140, 100, 60))
_PLUMAGE = {
    "landbird": ((170, 120, 60), (200, 170, 60), (180, 70, 50), (120, 80, 50)),
    "waterbird": ((235, 235, 235), (60, 60, 60), (170, 170, 160)),
}


@dataclass(frozen=True)
class Cues:
    """How the bird types differ; 1.0 is the full difference, 0.0 none.

    Attributes:
        shape: how far the neck, bill and feet of the two types differ.
        shared_colour: the share of birds drawn in a plumage colour common to both types.
        noise: standard deviation of the pixel noise, in grey levels.
        bird_size: the bird's body length as a share of the image side (mean).
    """

    shape: float = 1.0
    shared_colour: float = 0.1
    noise: float = 6.0
    bird_size: float = 0.40

    def __post_init__(self) -> None:
        for name in ("shape", "shared_colour"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"cues.{name}: expected a value in [0, 1], got {v!r}")
        if not 0.0 <= self.noise <= 64:
            raise ConfigError(f"cues.noise: expected 0-64, got {self.noise!r}")
        if not 0.1 <= self.bird_size <= 0.7:
            raise ConfigError(f"cues.bird_size: expected 0.1-0.7, got {self.bird_size!r}")


@dataclass(frozen=True)
class Scene:
    """One drawn image: ``image`` (H, W, 3) uint8, ``labels`` (H, W) uint8 label map."""

    image: np.ndarray
    labels: np.ndarray
    label: str
    place: str


def region_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """``{region: (H, W) bool}`` from a label map: the bird, and the scene (its complement)."""
    bird = np.isin(labels, _BIRD_LABELS)
    return {"bird": bird, "scene": ~bird}


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def draw_scene(
    rng: np.random.Generator, *, label: str, place: str, size: int = 64, cues: Cues | None = None
) -> Scene:
    """Draw one bird of type ``label`` on ``place``, at ``size`` pixels, from ``rng`` alone."""
    cues = Cues() if cues is None else cues
    s = 4  # drawn at 4x, then reduced: smooth edges, masks from the same reduced label map
    big = size * s
    lab = Image.new("L", (big, big), _SCENE)
    d = ImageDraw.Draw(lab)
    # the scene's texture: grass strokes on land, wave lines on water
    for _ in range(int(rng.integers(10, 20))):
        x, y = rng.uniform(0, big, 2)
        if place == "land":
            h = rng.uniform(0.03, 0.08) * big
            d.line([(x, y), (x + rng.uniform(-0.3, 0.3) * h, y - h)], fill=_SCENE_MARK, width=s)
        else:
            w = rng.uniform(0.08, 0.2) * big
            d.arc([x, y, x + w, y + w * 0.3], 200, 340, fill=_SCENE_MARK, width=s)
    # the bird, on a layer of its own, facing right or left (drawn facing right, mirrored after),
    # then pasted whole at a random place inside the frame
    water = label == "waterbird"
    k = cues.shape
    bird_layer = Image.new("L", (2 * big, 2 * big), _SCENE)
    d = ImageDraw.Draw(bird_layer)
    body_l = cues.bird_size * big * rng.uniform(0.85, 1.15)
    body_h = body_l * rng.uniform(0.6, 0.72)
    cx = cy = big
    d.ellipse([cx - body_l / 2, cy - body_h / 2, cx + body_l / 2, cy + body_h / 2], fill=_BODY)
    # neck: a waterbird's is longer (the head sits higher and further forward)
    neck = body_l * (0.25 + 0.3 * k * water + rng.uniform(-0.05, 0.05))
    head_r = body_l * rng.uniform(0.16, 0.2)
    hx, hy = cx + body_l * 0.38, cy - body_h * 0.3 - neck
    d.line([(cx + body_l * 0.3, cy - body_h * 0.2), (hx, hy)], fill=_BODY, width=int(head_r))
    d.ellipse([hx - head_r, hy - head_r, hx + head_r, hy + head_r], fill=_HEAD)
    # bill: long and flat for a waterbird, short and pointed for a landbird
    bill_l = head_r * (1.0 + 1.3 * k * water + rng.uniform(-0.15, 0.15))
    bill_h = head_r * (0.5 + 0.1 * k * water - 0.15 * k * (not water))
    bx = hx + head_r * 0.7
    tip = (bx + bill_l, hy + bill_h * 0.1 * water)
    d.polygon([(bx, hy - bill_h / 2), tip, (bx, hy + bill_h / 2)], fill=_BILL)
    er = max(head_r * 0.22, s)
    d.ellipse([hx + head_r * 0.2 - er, hy - head_r * 0.3 - er, hx + head_r * 0.2 + er,
               hy - head_r * 0.3 + er], fill=_EYE)  # fmt: skip
    # wing
    d.ellipse([cx - body_l * 0.35, cy - body_h * 0.35, cx + body_l * 0.15, cy + body_h * 0.2],
              fill=_WING)  # fmt: skip
    # legs and feet: broad webbed triangles for a waterbird, thin toes for a landbird
    leg_l = body_h * rng.uniform(0.5, 0.7)
    for lx in (cx - body_l * 0.1, cx + body_l * 0.08):
        top, foot = (lx, cy + body_h * 0.4), (lx, cy + body_h * 0.4 + leg_l)
        d.line([top, foot], fill=_LEGS, width=s)
        fw = body_l * (0.1 + 0.12 * k * water)
        if water:
            d.polygon([foot, (foot[0] + fw, foot[1] + s), (foot[0] - fw * 0.3, foot[1] + s)],
                      fill=_LEGS)  # fmt: skip
        else:
            for dx in (-fw, 0.0, fw):
                d.line([foot, (foot[0] + dx, foot[1] + s)], fill=_LEGS, width=s)
    if rng.random() < 0.5:
        bird_layer = bird_layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x0, y0, x1, y1 = bird_layer.getbbox() or (0, 0, 1, 1)
    bird_img = bird_layer.crop((x0, y0, x1, y1))
    # a random position with the whole bird in the frame (centred if it is wider than the frame)
    px = int(rng.uniform(0, max(big - (x1 - x0), 0))) if x1 - x0 < big else (big - (x1 - x0)) // 2
    py = int(rng.uniform(0, max(big - (y1 - y0), 0))) if y1 - y0 < big else (big - (y1 - y0)) // 2
    lab.paste(bird_img, (px, py), bird_img.point(lambda v: 255 if v != _SCENE else 0))
    labels = np.asarray(lab.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8)

    # colours
    ground = _LAND if place == "land" else _WATER
    base = _jitter(rng, ground[int(rng.integers(len(ground)))], 20)
    mark = tuple(int(np.clip(c * rng.uniform(0.7, 0.85), 0, 255)) for c in base)
    pal = _SHARED if rng.random() < cues.shared_colour else _PLUMAGE[label]
    plumage = _jitter(rng, pal[int(rng.integers(len(pal)))], 20)
    wing = tuple(int(c * rng.uniform(0.7, 0.9)) for c in plumage)
    head = plumage if rng.random() < 0.6 else _jitter(rng, pal[int(rng.integers(len(pal)))], 20)
    bill = _jitter(rng, (220, 170, 40) if rng.random() < 0.5 else (60, 50, 40), 20)
    colours = {
        _SCENE: base, _SCENE_MARK: mark, _BODY: plumage, _WING: wing, _HEAD: head,
        _BILL: bill, _LEGS: bill, _EYE: (10, 10, 10),
    }  # fmt: skip
    lut = np.zeros((256, 3), dtype=np.float32)
    for value, colour in colours.items():
        lut[value] = colour
    image = lut[labels]
    # a soft vertical shading of the scene (sky-ward lighter), and pixel noise
    shade = np.linspace(1.08, 0.92, size, dtype=np.float32)[:, None, None]
    scene = ~np.isin(labels, _BIRD_LABELS)
    image = np.where(scene[..., None], image * shade, image)
    noisy = image + rng.normal(0.0, cues.noise, image.shape)
    pixels = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return Scene(image=pixels, labels=labels, label=label, place=place)


# ---------------------------------------------------------------------------------------------
# Splits


def default_counts(*, quick: bool = False) -> dict[str, int]:
    """Images per split used when ``generate(n=None)``."""
    return dict(_COUNTS[quick])


def _cells(split: str, n: int) -> list[tuple[str, str]]:
    """(label, place) of each image of a split, in a fixed order (shuffled later)."""
    if n % 4:
        raise ConfigError(f"n[{split!r}]: expected a multiple of 4 images, got {n}")
    if split == "train":
        out: list[tuple[str, str]] = []
        for label in CLASSES:
            home = HOME[label]
            away = "water" if home == "land" else "land"
            k = round(n // 2 * SKEW)
            out += [(label, home)] * k + [(label, away)] * (n // 2 - k)
        return out
    return [(label, p) for label in CLASSES for p in PLACES for _ in range(n // 4)]


def _resolve_counts(n: int | Mapping[str, int] | None, quick: bool) -> dict[str, int]:
    return resolve_counts(n, default_counts(quick=quick), SPLITS)


def _write_split(root: Path, split: str, n: int, *, seed: int, size: int, cues: Cues) -> Path:
    folder = root / split
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    cells = _cells(split, n)
    rows = []
    for i, j in enumerate(shuffled(seed, split, n)):
        label, place = cells[j]
        sc = draw_scene(sample_rng(seed, split, i), label=label, place=place, size=size, cues=cues)
        sid = f"{split}-{i:05d}"
        row = {"id": sid, "image": f"images/{sid}.png", "label": label, "place": place}
        (folder / row["image"]).write_bytes(png(sc.image))
        for region, mask in region_masks(sc.labels).items():
            rel = f"masks/{sid}_{region}.png"
            (folder / rel).write_bytes(png(mask.astype(np.uint8) * 255))
            row[f"mask:{region}"] = rel
        row["split"] = split
        rows.append(row)
    columns = ["id", "image", "label", "place", *(f"mask:{r}" for r in REGIONS), "split"]
    return write_manifest(folder, columns, rows)


def generate(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    image_size: int = 64,
    n: int | Mapping[str, int] | None = None,
    quick: bool = False,
    force: bool = False,
    cues: Cues | None = None,
) -> dict[str, Path]:
    """Write the three splits of the waterbirds data set, PNG images, PNG masks and manifests.

    Layout as :func:`bias_audit.case_studies.nurse_doctor.generate`'s. Manifest columns: ``id``,
    ``image``, ``label`` (landbird/waterbird), ``place`` (land/water), ``mask:bird``,
    ``mask:scene``, ``split``.

    Splits: ``train`` (half of each class; :data:`SKEW` = 95% of each class on its own place),
    ``val`` and ``test`` (balanced over place x label).

    Raises:
        ConfigError: a bad argument (named).
        DataError: ``out_dir`` holds a complete data set made with other parameters and
            ``force`` is False.
    """
    check_generator_args(seed=seed, image_size=image_size)
    cues = Cues() if cues is None else cues
    counts = _resolve_counts(n, quick)
    for split, k in counts.items():
        _cells(split, k)  # validate every split before writing anything
    root = Path(out_dir)
    params = {
        "generator": "waterbirds", "version": GENERATOR_VERSION, "seed": seed,
        "image_size": image_size, "counts": counts, "cues": asdict(cues),
    }  # fmt: skip

    def write(split: str) -> None:
        _write_split(root, split, counts[split], seed=seed, size=image_size, cues=cues)

    return generate_once(root, params, SPLITS, write, force=force)
