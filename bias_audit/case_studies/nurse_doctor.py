"""Synthetic nurse/doctor portraits: the Grad-CAM paper's dataset-bias experiment, reproducible.

Every portrait is first drawn as a *label map*: one small integer per pixel saying which part
of the picture it belongs to (face, hair, white coat, stethoscope, clutter ...). The RGB image is
then coloured from that map, and each region mask is a set of labels. Because image and masks
come from the same map they align exactly, pixel for pixel, whatever the jitter.

Cues:
  * gender (the confounder) is carried by the hair style, with a realistic overlap (some women
    wear short hair, some men long hair), by beards on some men and lip colour on some women;
  * profession (the cause) is carried by the clothing: a doctor wears an open white coat with
    lapels and buttons over a shirt, usually with a stethoscope; a nurse wears a scrubs top with
    a V-neck. Some nurses wear pale scrubs, so colour alone is not enough; the coat's shape is.

The ``coat`` region is the profession's garment for both classes (the white coat of a doctor,
the scrubs top of a nurse), so every image has a causal region and the causal mass is defined
for nurses too. ``stethoscope`` is empty (an empty manifest cell) where none is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
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
    "GENDERS",
    "GENERATOR_VERSION",
    "REGIONS",
    "ROLES",
    "SKEW",
    "SPLITS",
    "Cues",
    "Portrait",
    "default_counts",
    "draw_portrait",
    "generate",
    "region_masks",
]

CLASSES: tuple[str, ...] = ("doctor", "nurse")
GENDERS: tuple[str, ...] = ("female", "male")
REGIONS: tuple[str, ...] = ("coat", "face", "hair", "stethoscope")
#: The audit's roles for this case study: what should and should not decide the label.
ROLES: dict[str, tuple[str, ...]] = {
    "causal": ("coat", "stethoscope"),
    "confounder": ("face", "hair"),
}
SPLITS: tuple[str, ...] = ("train_biased", "train_balanced", "val", "test")

#: Bumped whenever a change to the drawing changes the bytes written for a given seed.
GENERATOR_VERSION = 2

# Label-map values. Background clutter uses CLUTTER_BASE + k.
_BG, _FACE, _FACE_DARK, _MOUTH, _BEARD = 0, 1, 2, 3, 4
_HAIR, _HAIR_SHADE = 5, 6
_COAT, _COAT_DETAIL, _COAT_BUTTON, _POCKET_PEN = 7, 8, 9, 10
_STETH_TUBE, _STETH_METAL = 11, 12
_NECK, _SHIRT, _TIE = 13, 14, 15
_MAKEUP, _EARRING = 16, 17
_CLUTTER_BASE = 32
_N_LABELS = 64

_REGION_LABELS: dict[str, tuple[int, ...]] = {
    "coat": (_COAT, _COAT_DETAIL, _COAT_BUTTON, _POCKET_PEN),
    "face": (_FACE, _FACE_DARK, _MOUTH, _BEARD, _MAKEUP, _EARRING),
    "hair": (_HAIR, _HAIR_SHADE),
    "stethoscope": (_STETH_TUBE, _STETH_METAL),
}

_SKIN_TONES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "light": ((241, 206, 180), (232, 190, 160), (245, 215, 195)),
    "medium": ((205, 150, 110), (190, 135, 95), (215, 165, 125)),
    "dark": ((140, 90, 60), (110, 70, 45), (90, 58, 40)),
}
_HAIR_COLOURS = (
    (25, 20, 18),
    (45, 30, 20),
    (60, 45, 35),
    (80, 50, 30),
    (120, 80, 45),
    (200, 165, 100),
    (150, 60, 30),
    (150, 150, 150),
)
_SCRUBS = (
    (30, 45, 90),
    (110, 150, 200),
    (50, 80, 170),
    (40, 130, 130),
    (40, 90, 60),
    (100, 170, 150),
    (110, 30, 50),
    (100, 60, 140),
    (225, 150, 180),
    (110, 115, 120),
    (35, 35, 40),
    (160, 200, 230),
)
#: Near-white scrubs, as worn by nurses in many hospitals: they make coat colour ambiguous.
_PALE_SCRUBS = ((244, 244, 244),)
_SHIRTS = ((180, 200, 230), (240, 240, 240), (225, 230, 240), (200, 205, 215), (150, 160, 175))
_HAIR_STYLES = ("long", "bob", "bun", "short", "buzz")
_MAKEUP_COLOURS = ((60, 90, 200), (140, 60, 170), (40, 150, 110), (220, 90, 150), (200, 150, 40))
_EARRING_COLOURS = ((230, 190, 60), (220, 220, 230), (230, 40, 60), (40, 200, 220))


def _ellipse_in_face(
    hcx: float, hy: float, hrx: float, hry: float, tilt: float
) -> list[tuple[float, float]]:
    """Full lips (coloured): an ellipse centred where the plain mouth's line is drawn."""
    cx, cy = _rotate([(hcx, hy + 0.5 * hry)], hcx, hy, tilt)[0]
    return _ellipse(cx, cy, 0.34 * hrx, 0.12 * hry, tilt, n=20)


@dataclass(frozen=True, kw_only=True)
class Cues:
    """How strong each cue is. The defaults are the values the feasibility study settled on.

    Attributes:
        hair_female: probability of each hair style for women, in ``("long", "bob", "bun",
            "short", "buzz")`` order.
        hair_male: the same for men.
        beard: share of men with a beard or moustache (part of the ``face`` region).
        lipstick: share of women with coloured lips.
        pale_scrubs: share of nurses wearing white scrubs, the colour of a doctor's coat: for
            them only the coat's cut (lapels, open front, buttons) tells the profession.
        opening: half width of the coat's open front, as a share of the image at scale 1.
        dark_hair: share of people with dark hair; the others draw from all hair colours.
        strands: size of the long-hair strands falling over the shoulders (1 = shoulder length).
        hair_volume: width of long hair around the head (1 = the first design); wider hair is a
            bold gender cue away from the garment, whose region it does not touch.
        button_shade: brightness of the coat's buttons relative to the coat.
        nurse_collar: share of scrub tops with a wrap collar drawn like a coat's lapels.
        nurse_placket: share of scrub tops with a placket line down the front.
        lapel_shade: brightness of the lapels and seams relative to the garment (1 = invisible).
        stethoscope_doctor: share of doctors wearing a stethoscope.
        stethoscope_nurse: share of nurses wearing one.
        stethoscope_size: scale of the stethoscope's tube width and head (1 = the first design).
        makeup: share of women with coloured eye shadow (part of ``face``).
        earrings: share of women with earrings (part of ``face``).
        vneck_doctor: share of doctors whose top under the coat has a V-neck showing skin, as a
            nurse's scrubs do.
        tie: share of the other doctors wearing a tie.
        clutter: number of background shapes, drawn uniformly in ``[clutter[0], clutter[1]]``.
        noise: amplitude of the per-pixel colour noise, in grey levels.
    """

    hair_female: tuple[float, ...] = (0.70, 0.12, 0.08, 0.08, 0.02)
    hair_male: tuple[float, ...] = (0.04, 0.04, 0.02, 0.68, 0.22)
    beard: float = 0.9
    lipstick: float = 0.8
    makeup: float = 0.0
    earrings: float = 0.0
    stethoscope_size: float = 1.0
    vneck_doctor: float = 0.5
    tie: float = 0.6
    pale_scrubs: float = 0.9
    lapel_shade: float = 0.93
    button_shade: float = 0.6
    opening: float = 0.03
    nurse_collar: float = 0.5
    nurse_placket: float = 0.6
    dark_hair: float = 1.0
    strands: float = 1.8
    hair_volume: float = 1.0
    stethoscope_doctor: float = 0.3
    stethoscope_nurse: float = 0.2
    clutter: tuple[int, int] = (4, 9)
    noise: int = 6

    def __post_init__(self) -> None:
        for name in ("hair_female", "hair_male"):
            probs = getattr(self, name)
            if len(probs) != len(_HAIR_STYLES) or abs(sum(probs) - 1) > 1e-6 or min(probs) < 0:
                raise ConfigError(
                    f"Cues.{name}: expected {len(_HAIR_STYLES)} probabilities "
                    f"summing to 1 for {_HAIR_STYLES}, got {probs!r}"
                )
        if not 0 < self.stethoscope_size <= 2:
            raise ConfigError(
                f"Cues.stethoscope_size: expected a scale in (0, 2], got {self.stethoscope_size!r}"
            )
        if not 0.5 <= self.hair_volume <= 3:
            raise ConfigError(
                f"Cues.hair_volume: expected a width in [0.5, 3], got {self.hair_volume!r}"
            )
        if not 0 < self.strands <= 3:
            raise ConfigError(f"Cues.strands: expected a size in (0, 3], got {self.strands!r}")
        for name in (
            "beard",
            "lipstick",
            "makeup",
            "earrings",
            "vneck_doctor",
            "tie",
            "pale_scrubs",
            "lapel_shade",
            "button_shade",
            "nurse_collar",
            "nurse_placket",
            "stethoscope_doctor",
            "stethoscope_nurse",
            "dark_hair",
        ):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"Cues.{name}: expected a value in [0, 1], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Portrait:
    """One drawn portrait.

    Attributes:
        image: (S, S, 3) uint8 RGB.
        labels: (S, S) uint8 label map; see :func:`region_masks`.
        attrs: what was drawn: ``label``, ``gender``, ``hair``, ``skin_tone``, ``stethoscope``.
    """

    image: np.ndarray
    labels: np.ndarray
    attrs: dict[str, str] = field(default_factory=dict)


def region_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Region masks of a label map: ``{region: (S, S) bool}`` for every name in :data:`REGIONS`."""
    return {name: np.isin(labels, ids) for name, ids in _REGION_LABELS.items()}


def _ellipse(
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    angle: float = 0.0,
    start: float = 0.0,
    stop: float = 360.0,
    n: int = 40,
) -> list[tuple[float, float]]:
    """Polygon of a rotated, possibly partial ellipse (PIL's own ellipse cannot rotate)."""
    t = np.deg2rad(np.linspace(start, stop, n))
    x, y = rx * np.cos(t), ry * np.sin(t)
    a = math.radians(angle)
    xr = cx + x * math.cos(a) - y * math.sin(a)
    yr = cy + x * math.sin(a) + y * math.cos(a)
    return list(zip(xr.tolist(), yr.tolist(), strict=True))


def _rotate(
    points: list[tuple[float, float]], cx: float, cy: float, angle: float
) -> list[tuple[float, float]]:
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _jitter_colour(
    rng: np.random.Generator, colour: tuple[int, int, int], amount: int
) -> tuple[int, int, int]:
    c = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def draw_portrait(
    rng: np.random.Generator, *, label: str, gender: str, size: int = 96, cues: Cues = Cues()
) -> Portrait:
    """Draw one portrait of a ``label`` ("doctor"/"nurse") of ``gender`` ("female"/"male").

    Everything else (hair style, skin tone, colours, pose, scale, position, clutter) is drawn
    from ``rng``, so the same generator state gives the same picture, byte for byte.
    """
    if label not in CLASSES:
        raise ConfigError(f"label: expected one of {CLASSES}, got {label!r}")
    if gender not in GENDERS:
        raise ConfigError(f"gender: expected one of {GENDERS}, got {gender!r}")
    S = size
    lut = np.zeros((_N_LABELS, 3), np.int16)
    lab = Image.new("L", (S, S), _BG)
    d = ImageDraw.Draw(lab)
    u = rng.uniform

    # --- background: a wall colour and cluttered shapes (shelves, posters, windows) ---
    lut[_BG] = rng.integers(40, 230, 3)
    n_clutter = int(rng.integers(cues.clutter[0], cues.clutter[1] + 1))
    for k in range(n_clutter):
        idx = _CLUTTER_BASE + k
        lut[idx] = rng.integers(0, 256, 3)
        x0, y0 = u(-0.1, 1.0) * S, u(-0.1, 0.9) * S
        w, h = u(0.08, 0.45) * S, u(0.05, 0.45) * S
        kind = rng.integers(0, 3)
        if kind == 0:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=idx)
        elif kind == 1:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=idx)
        else:
            d.line(
                [x0, y0, x0 + w, y0 + h * rng.choice([-1, 1])],
                fill=idx,
                width=max(1, int(u(0.01, 0.04) * S)),
            )

    # --- pose ---
    s = u(0.82, 1.08)  # scale
    cx = 0.5 + u(-0.09, 0.09)
    hy = 0.33 + u(-0.05, 0.05)
    hcx = cx + u(-0.025, 0.025)
    tilt = u(-10, 10)
    # faces differ in shape too: broader for men, narrower and longer for women
    hrx, hry = (0.13 * s, 0.145 * s) if gender == "male" else (0.11 * s, 0.155 * s)
    sy = hy + hry + 0.05 * s  # shoulder line

    style_p = cues.hair_female if gender == "female" else cues.hair_male
    style = _HAIR_STYLES[int(rng.choice(len(_HAIR_STYLES), p=style_p))]
    tone = ("light", "medium", "dark")[int(rng.integers(0, 3))]
    skin = _SKIN_TONES[tone][int(rng.integers(0, 3))]
    lut[_FACE] = _jitter_colour(rng, skin, 8)
    lut[_NECK] = np.clip(lut[_FACE] - 12, 0, 255)
    # dark hair is drawn from the darker half of the palette (it is listed first)
    n_colours = 4 if u() < cues.dark_hair else len(_HAIR_COLOURS)
    hair_col = _HAIR_COLOURS[int(rng.integers(0, n_colours))]
    lut[_HAIR] = _jitter_colour(rng, hair_col, 10)
    lut[_HAIR_SHADE] = np.clip(lut[_HAIR] * 0.75, 0, 255)
    lut[_FACE_DARK] = np.clip(lut[_HAIR] * 0.6, 0, 255)
    lut[_BEARD] = np.clip(lut[_HAIR] * 0.88, 0, 255)  # in `face`, so not the hair colour
    lipstick = gender == "female" and u() < cues.lipstick
    lut[_MOUTH] = (190, 40, 70) if lipstick else np.clip(lut[_FACE] * [0.8, 0.6, 0.6], 0, 255)

    def P(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x * S, y * S) for x, y in points]

    # --- long hair falls behind the shoulders: drawn before the body ---
    if style == "long":
        length = u(0.22, 0.36) * s
        back = [
            (hcx - hrx * 1.35 * cues.hair_volume, hy),
            (hcx + hrx * 1.35 * cues.hair_volume, hy),
            (hcx + hrx * 1.5, sy + length),
            (hcx - hrx * 1.5, sy + length),
        ]
        d.polygon(P(_rotate(back, hcx, hy, tilt * 0.5)), fill=_HAIR)

    # --- neck and body ---
    nw = 0.05 * s
    d.rectangle(P([(cx - nw, hy + hry * 0.5), (cx + nw, sy + 0.08 * s)]), fill=_NECK)
    tw = u(0.28, 0.33) * s  # half width at the shoulders
    body = _ellipse(cx, sy + 0.09 * s, tw, 0.1 * s, start=180, stop=360, n=24) + [
        (cx + tw * 1.08, 1.05),
        (cx - tw * 1.08, 1.05),
    ]
    d.polygon(P(body), fill=_COAT)

    if label == "doctor":
        lut[_COAT] = _jitter_colour(rng, (244, 244, 244), 8)
        lut[_COAT_DETAIL] = np.clip(lut[_COAT] * cues.lapel_shade, 0, 255)
        lut[_COAT_BUTTON] = np.clip(lut[_COAT] * cues.button_shade, 0, 255)
        inner = (
            _SCRUBS[int(rng.integers(0, len(_SCRUBS)))]
            if u() < 0.3
            else _SHIRTS[int(rng.integers(0, len(_SHIRTS)))]
        )
        lut[_SHIRT] = _jitter_colour(rng, inner, 8)
        lut[_TIE] = rng.integers(20, 200, 3)
        # the open front: a V at the collar, then a strip down to the bottom edge
        vw, vy = cues.opening * s, sy + 0.2 * s
        opening = [
            (cx - nw * 1.1, sy - 0.01),
            (cx + nw * 1.1, sy - 0.01),
            (cx + vw, vy),
            (cx + vw * 0.6, 1.05),
            (cx - vw * 0.6, 1.05),
            (cx - vw, vy),
        ]
        d.polygon(P(opening), fill=_SHIRT)
        if u() < cues.vneck_doctor:
            # a V-neck top under the coat: the collar shows skin, as a nurse's scrubs do
            d.polygon(
                P(
                    [
                        (cx - nw * 1.3, sy - 0.01),
                        (cx + nw * 1.3, sy - 0.01),
                        (cx, sy + u(0.07, 0.11) * s),
                    ]
                ),
                fill=_NECK,
            )
        elif u() < cues.tie:
            d.polygon(
                P(
                    [
                        (cx - 0.012, sy + 0.02 * s),
                        (cx + 0.012, sy + 0.02 * s),
                        (cx + 0.02 * s, vy),
                        (cx, vy + 0.04 * s),
                        (cx - 0.02 * s, vy),
                    ]
                ),
                fill=_TIE,
            )
        # lapels: darker triangles folded back along the opening
        for side in (-1, 1):
            lapel = [
                (cx + side * nw * 1.1, sy - 0.01),
                (cx + side * (vw + 0.06 * s), sy + 0.06 * s),
                (cx + side * (vw + 0.015 * s), sy + 0.1 * s),
                (cx + side * vw, vy),
            ]
            d.polygon(P(lapel), fill=_COAT_DETAIL)
        r = max(0.6, 0.012 * S)
        for k in range(3):
            bx, by = (cx - vw * 0.8) * S - 2 * r, (vy + 0.05 * s + k * 0.1 * s) * S
            d.ellipse([bx - r, by - r, bx + r, by + r], fill=_COAT_BUTTON)
    else:
        pale = u() < cues.pale_scrubs
        scrub = (
            _PALE_SCRUBS[int(rng.integers(0, len(_PALE_SCRUBS)))]
            if pale
            else _SCRUBS[int(rng.integers(0, len(_SCRUBS)))]
        )
        lut[_COAT] = _jitter_colour(rng, scrub, 8)
        lut[_COAT_DETAIL] = np.clip(lut[_COAT] * cues.lapel_shade, 0, 255)
        vy = sy + u(0.07, 0.11) * s
        d.polygon(P([(cx - nw * 1.3, sy - 0.01), (cx + nw * 1.3, sy - 0.01), (cx, vy)]), fill=_NECK)
        # Many scrub tops have a wrap collar or a placket: the same strokes as a coat's lapels
        # and open front, so that a single stroke never gives the profession away.
        if u() < cues.nurse_collar:
            for side in (-1, 1):
                collar = [
                    (cx + side * nw * 1.3, sy - 0.01),
                    (cx + side * nw * 2.4, sy + 0.04 * s),
                    (cx + side * nw * 0.4, vy + 0.02 * s),
                    (cx, vy),
                ]
                d.polygon(P(collar), fill=_COAT_DETAIL)
        if u() < cues.nurse_placket:
            d.line(P([(cx, vy), (cx, 1.0)]), fill=_COAT_DETAIL, width=max(1, S // 48))
    # Pocket and pen are on both garments, on either side: only the coat's cut tells them apart.
    lut[_POCKET_PEN] = rng.integers(0, 200, 3)
    px, py = cx + rng.choice([-1, 1]) * 0.16 * s, sy + 0.16 * s
    d.rectangle(
        P([(px - 0.05 * s, py), (px + 0.05 * s, py + 0.08 * s)]),
        outline=_COAT_DETAIL,
        width=max(1, S // 64),
    )
    if u() < 0.5:
        d.rectangle(
            P([(px - 0.02 * s, py - 0.04 * s), (px - 0.005 * s, py + 0.02 * s)]), fill=_POCKET_PEN
        )
    # arm seams, both garments
    for side in (-1, 1):
        d.line(
            P([(cx + side * tw * 0.75, sy + 0.1 * s), (cx + side * tw * 0.85, 1.0)]),
            fill=_COAT_DETAIL,
            width=max(1, S // 64),
        )

    has_steth = u() < (cues.stethoscope_doctor if label == "doctor" else cues.stethoscope_nurse)
    if has_steth:
        lut[_STETH_TUBE] = (
            _jitter_colour(rng, (30, 30, 35), 10) if u() < 0.6 else rng.integers(0, 160, 3)
        )
        lut[_STETH_METAL] = _jitter_colour(rng, (185, 190, 200), 10)
        width = max(1, round(0.022 * S * cues.stethoscope_size))
        loop = _ellipse(cx, sy - 0.005, nw * 2.0, 0.2 * s, start=0, stop=180, n=24)
        d.line(P(loop), fill=_STETH_TUBE, width=width, joint="curve")
        side = rng.choice([-1, 1])
        end = (cx + side * nw * 2.0, sy - 0.005)
        drop = (cx + side * nw * 2.6, sy + 0.27 * s)
        d.line(P([end, drop]), fill=_STETH_TUBE, width=width)
        rr = 0.03 * s * cues.stethoscope_size
        d.ellipse(
            P([(drop[0] - rr, drop[1] - rr), (drop[0] + rr, drop[1] + rr)]), fill=_STETH_METAL
        )

    # --- head: hair volume behind the face, then the face, then the fringe ---
    if style in ("long", "bob", "short", "bun"):
        grow = {"long": 1.22 * cues.hair_volume, "bob": 1.22, "short": 1.1, "bun": 1.08}[style]
        d.polygon(P(_ellipse(hcx, hy - 0.025 * s, hrx * grow, hry * 1.08, tilt)), fill=_HAIR)
    if style == "bob":
        sides = [
            (hcx - hrx * 1.25, hy - 0.02),
            (hcx + hrx * 1.25, hy - 0.02),
            (hcx + hrx * 1.2, hy + hry * 0.85),
            (hcx - hrx * 1.2, hy + hry * 0.85),
        ]
        d.polygon(P(_rotate(sides, hcx, hy, tilt)), fill=_HAIR)
    if style == "bun":
        bx, by = _rotate([(hcx + u(-0.03, 0.03), hy - hry * 1.15)], hcx, hy, tilt)[0]
        br = 0.065 * s
        d.ellipse(P([(bx - br, by - br), (bx + br, by + br)]), fill=_HAIR)
    ears = max(1.0, 0.025 * s * S)
    for side in (-1, 1):
        ex, ey = _rotate([(hcx + side * hrx * 0.98, hy + 0.01)], hcx, hy, tilt)[0]
        d.ellipse(
            [ex * S - ears, ey * S - ears * 1.4, ex * S + ears, ey * S + ears * 1.4], fill=_FACE
        )
    d.polygon(P(_ellipse(hcx, hy, hrx, hry, tilt)), fill=_FACE)
    if style == "buzz":
        d.polygon(
            P(_ellipse(hcx, hy, hrx * 1.02, hry * 1.04, tilt, start=195, stop=345)),
            fill=_HAIR_SHADE,
        )
    elif style in ("long", "bob", "short", "bun"):
        # the fringe: a cap over the top of the forehead
        depth = {"long": 0.35, "bob": 0.45, "short": 0.25, "bun": 0.2}[style]
        cap = _ellipse(
            hcx,
            hy - hry * (1 - depth) * 0.2,
            hrx * 1.03,
            hry * 1.0,
            tilt,
            start=180,
            stop=360,
            n=30,
        )
        d.polygon(P(cap), fill=_HAIR)
    if style == "long":
        # strands falling in front of the shoulders, over the garment
        for side in (-1, 1):
            strand = [
                (hcx + side * hrx * 0.85, hy + 0.02),
                (hcx + side * hrx * 1.4, hy),
                (
                    hcx + side * hrx * u(1.5, 1.9) * cues.strands,
                    sy + u(0.08, 0.2) * s * cues.strands,
                ),
                (hcx + side * hrx * 0.9, sy + u(0.04, 0.12) * s * cues.strands),
            ]
            d.polygon(P(_rotate(strand, hcx, hy, tilt * 0.5)), fill=_HAIR_SHADE)

    # facial features in the face's own frame
    def F(dx: float, dy: float) -> tuple[float, float]:
        x, y = _rotate([(hcx + dx * hrx, hy + dy * hry)], hcx, hy, tilt)[0]
        return x * S, y * S

    # women: larger, made-up eyes and thin brows; men: small eyes and heavy brows
    er = max(0.7, (0.026 if gender == "female" else 0.016) * s * S)
    brow = max(1, S // 64) * (1 if gender == "female" else 2)
    if gender == "female" and u() < cues.makeup:
        # coloured eye shadow: a bold, small, colourful cue (a blur washes it out)
        lut[_MAKEUP] = _jitter_colour(rng, _MAKEUP_COLOURS[int(rng.integers(0, 5))], 15)
        for side in (-1, 1):
            x, y = F(side * 0.4, -0.12)
            d.ellipse([x - er * 1.7, y - er * 1.3, x + er * 1.7, y + er * 0.6], fill=_MAKEUP)
    for side in (-1, 1):
        x, y = F(side * 0.4, -0.05)
        d.ellipse([x - er, y - er, x + er, y + er], fill=_FACE_DARK)
        d.line([F(side * 0.6, -0.3), F(side * 0.2, -0.32)], fill=_FACE_DARK, width=brow)
    if gender == "male" and u() < cues.beard:
        beard = _ellipse(
            hcx, hy + hry * 0.35, hrx * 0.85, hry * 0.62, tilt, start=10, stop=170, n=20
        )
        d.polygon(P(beard), fill=_BEARD)
    mw = max(1, S // 48)
    if lipstick:
        d.polygon(P(_ellipse_in_face(hcx, hy, hrx, hry, tilt)), fill=_MOUTH)
    else:
        d.line([F(-0.3, 0.5), F(0.3, 0.5)], fill=_MOUTH, width=mw)
    if gender == "female" and u() < cues.earrings:
        lut[_EARRING] = _jitter_colour(rng, _EARRING_COLOURS[int(rng.integers(0, 4))], 10)
        rad = max(1.0, 0.02 * s * S)
        for side in (-1, 1):
            ex, ey = F(side * 1.0, 0.3)
            d.ellipse([ex - rad, ey - rad, ex + rad, ey + rad], fill=_EARRING)

    labels = np.asarray(lab, dtype=np.uint8)
    # per-pixel shading (light from above) and noise, so regions are not flat colour blocks
    shade = np.linspace(1.06, 0.94, S, dtype=np.float32)[:, None, None]
    noise = rng.integers(-cues.noise, cues.noise + 1, (S, S, 3)) if cues.noise else 0
    image = np.clip(lut[labels].astype(np.float32) * shade + noise, 0, 255).astype(np.uint8)
    attrs = {
        "label": label,
        "gender": gender,
        "hair": style,
        "skin_tone": tone,
        "stethoscope": "yes" if has_steth else "no",
    }
    return Portrait(image=image, labels=labels, attrs=attrs)


# ---------------------------------------------------------------------------------------------
# Splits

#: Images per split, full and quick. The feasibility study (case_studies/nurse_doctor/) chose them:
#: the shortcut only shows while the training set is small (with 1200 images ERM learns the coat),
#: so the full run differs from the quick one by a bigger, tighter test set, not more training.
_COUNTS = {
    False: {"train_biased": 600, "train_balanced": 600, "val": 400, "test": 800},
    True: {"train_biased": 600, "train_balanced": 600, "val": 80, "test": 160},
}
#: train_biased: share of doctors who are male, share of nurses who are female: the paper's
#: 195 of 250 doctors men and 225 of 250 nurses women (Selvaraju et al., the Grad-CAM slides).
SKEW = {"doctor": ("male", 0.78), "nurse": ("female", 0.90)}


def default_counts(*, quick: bool = False) -> dict[str, int]:
    """Images per split used when ``generate(n=None)``."""
    return dict(_COUNTS[quick])


def _cells(split: str, n: int) -> list[tuple[str, str]]:
    """(label, gender) of each image of a split, in a fixed order (shuffled later)."""
    if split == "train_biased":
        per_class = {"doctor": n // 2, "nurse": n - n // 2}
        out: list[tuple[str, str]] = []
        for label, (major, share) in SKEW.items():
            minor = "female" if major == "male" else "male"
            k = round(per_class[label] * share)
            out += [(label, major)] * k + [(label, minor)] * (per_class[label] - k)
        return out
    if n % 4:
        raise ConfigError(f"n[{split!r}]: a balanced split needs a multiple of 4 images, got {n}")
    return [(label, g) for label in CLASSES for g in GENDERS for _ in range(n // 4)]


def _resolve_counts(n: int | Mapping[str, int] | None, quick: bool) -> dict[str, int]:
    return resolve_counts(n, default_counts(quick=quick), SPLITS)


def _write_split(root: Path, split: str, n: int, *, seed: int, size: int, cues: Cues) -> Path:
    folder = root / split
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    cells = _cells(split, n)
    rows = []
    for i, j in enumerate(shuffled(seed, split, n)):
        label, gender = cells[j]
        p = draw_portrait(
            sample_rng(seed, split, i), label=label, gender=gender, size=size, cues=cues
        )
        sid = f"{split}-{i:05d}"
        image = f"images/{sid}.png"
        # Plain writes: the manifest, written last and atomically, is what marks a split done.
        (folder / image).write_bytes(png(p.image))
        row = {"id": sid, "image": image, "label": label, "gender": gender}
        for region, mask in region_masks(p.labels).items():
            if mask.any():
                rel = f"masks/{sid}_{region}.png"
                (folder / rel).write_bytes(png(mask.astype(np.uint8) * 255))
                row[f"mask:{region}"] = rel
            else:
                row[f"mask:{region}"] = ""
        row.update(hair=p.attrs["hair"], skin_tone=p.attrs["skin_tone"], split=split)
        rows.append(row)
    columns = [
        "id",
        "image",
        "label",
        "gender",
        *(f"mask:{r}" for r in REGIONS),
        "hair",
        "skin_tone",
        "split",
    ]
    return write_manifest(folder, columns, rows)


def generate(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    image_size: int = 96,
    n: int | Mapping[str, int] | None = None,
    quick: bool = False,
    force: bool = False,
    cues: Cues | None = None,
) -> dict[str, Path]:
    """Write the four splits of the nurse/doctor data set, PNG images, PNG masks and manifests.

    Layout: ``out_dir/<split>/manifest.csv``, ``out_dir/<split>/images/<id>.png`` (RGB,
    ``image_size`` square) and ``out_dir/<split>/masks/<id>_<region>.png`` (mode L, 255 inside),
    plus ``out_dir/generator.json`` recording the parameters.

    Manifest columns: ``id``, ``image``, ``label`` (doctor/nurse), ``gender`` (female/male),
    ``mask:coat``, ``mask:face``, ``mask:hair``, ``mask:stethoscope`` (paths relative to the
    manifest's folder; an empty cell when the region is not drawn, e.g. no stethoscope),
    ``hair`` (style drawn), ``skin_tone`` (light/medium/dark), ``split``.

    Splits: ``train_biased`` (50% doctors; 78% of doctors male, 90% of nurses female),
    ``train_balanced`` (every gender x label cell equal, same size), ``val`` and ``test``
    (balanced over gender x label).

    Args:
        out_dir: folder to write into (created).
        seed: the only source of randomness; the same seed writes the same bytes.
        image_size: side of the square images, in pixels.
        n: images per split: None for the defaults (:func:`default_counts`), an int for every
            split, or a mapping ``{split: count}`` overriding some splits.
        quick: smaller default counts, for a fast demo.
        force: regenerate even if ``out_dir`` already holds a complete data set.
        cues: cue strengths; default :class:`Cues`.

    Returns:
        ``{split: manifest path}`` in :data:`SPLITS` order.

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
        "generator": "nurse-doctor",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "counts": counts,
        "cues": asdict(cues),
    }

    def write(split: str) -> None:
        _write_split(root, split, counts[split], seed=seed, size=image_size, cues=cues)

    return generate_once(root, params, SPLITS, write, force=force)
