"""Tiny generated data with a shortcut: a colour spot predicts the label, a shape decides it.

Each image is 40x40: a grey cross ("cross") or ring ("ring") at a random place in the middle
(the causal feature), and a 10x10 red or blue spot in a random corner (the spurious feature,
annotated as region ``spot`` and recorded as attribute ``spot``). Red goes with "cross" and
blue with "ring" in a share ``p_align`` of the images; the rest are counter-stereotypical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SIZE = 40
SPOT = 10
COLOURS = {"red": (220, 40, 40), "blue": (40, 40, 220)}


def _shape(kind: str) -> np.ndarray:
    yy, xx = np.mgrid[:13, :13] - 6
    if kind == "cross":
        return (np.abs(yy) <= 1) | (np.abs(xx) <= 1)
    r = np.sqrt(yy**2 + xx**2)
    return (r >= 4) & (r <= 6)


def write_spurious(
    folder: Path, n: int, *, p_align: float, seed: int, noise: int = 100, ink: int = 115
) -> Path:
    """Write ``n`` PNGs, their spot masks and ``manifest.csv`` into ``folder``; return the path."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "mask").mkdir(parents=True, exist_ok=True)
    rows = []
    n_counter = int(round(n * (1 - p_align)))
    counter = np.zeros(n, dtype=bool)
    counter[rng.permutation(n)[:n_counter]] = True
    corners = [(0, 0), (0, SIZE - SPOT), (SIZE - SPOT, 0), (SIZE - SPOT, SIZE - SPOT)]
    for i in range(n):
        label = ("cross", "ring")[i % 2]
        aligned = "red" if label == "cross" else "blue"
        spot = ({"red": "blue", "blue": "red"}[aligned]) if counter[i] else aligned
        img = rng.integers(0, noise, size=(SIZE, SIZE, 3)).astype(np.uint8)
        y, x = rng.integers(SPOT, SIZE - SPOT - 13, size=2)
        img[y : y + 13, x : x + 13][_shape(label)] = ink
        cy, cx = corners[rng.integers(4)]
        img[cy : cy + SPOT, cx : cx + SPOT] = COLOURS[spot]
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        mask[cy : cy + SPOT, cx : cx + SPOT] = 255
        Image.fromarray(img).save(folder / "img" / f"{i}.png")
        Image.fromarray(mask, mode="L").save(folder / "mask" / f"{i}.png")
        rows.append(
            {"image": f"img/{i}.png", "label": label, "spot": spot, "mask:spot": f"mask/{i}.png"}
        )
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
