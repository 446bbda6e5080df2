"""Builders for tiny manifests written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def write_image(path: Path, width: int, height: int, *, seed: int = 0, mode: str = "RGB") -> Path:
    """A random image of the given size, saved as PNG (or whatever the suffix says)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)
    return path


def write_manifest(folder: Path, rows: list[dict], name: str = "manifest.csv") -> Path:
    path = folder / name
    df = pd.DataFrame(rows)
    if name.endswith(".csv"):
        df.to_csv(path, index=False)
    elif name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True)
    return path


@pytest.fixture
def small_manifest(tmp_path: Path) -> Path:
    """Six images of assorted sizes, two classes, a gender attribute, a box and a mask region."""
    rows = []
    sizes = [(40, 30), (30, 50), (64, 64), (50, 20), (20, 50), (33, 33)]
    for i, (w, h) in enumerate(sizes):
        write_image(tmp_path / "img" / f"{i}.png", w, h, seed=i)
        mask = np.zeros((h, w), dtype=bool)
        mask[: h // 2, : w // 2] = True
        write_mask(tmp_path / "masks" / f"{i}.png", mask)
        rows.append(
            {
                "image": f"img/{i}.png",
                "label": ["nurse", "doctor"][i % 2],
                "gender": ["female", "male", "female"][i % 3],
                "bbox:coat": f"2 3 {w - 1} {h - 2}" if i != 3 else "",
                "mask:hair": f"masks/{i}.png" if i != 4 else "",
            }
        )
    return write_manifest(tmp_path, rows)
