"""Save a contact sheet of generated portraits and their masks: samples.png beside this file.

Run: PYTHONPATH=. python case_studies/nurse_doctor/samples.py (drawn with train.toml's cues)
Rows: one per gender x profession cell; each portrait is followed by its region overlay
(face red, hair yellow, coat blue, stethoscope green).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

from bias_audit.case_studies import nurse_doctor
from bias_audit.case_studies._runner import generator_options
from bias_audit.case_studies.nurse_doctor import draw_portrait, region_masks

COLOURS = {"face": (230, 60, 60), "hair": (240, 210, 40), "coat": (60, 110, 240),
           "stethoscope": (40, 200, 80)}


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32) * 0.35
    for region, mask in region_masks(labels).items():
        out[mask] += np.asarray(COLOURS[region], np.float32) * 0.65
    return out.clip(0, 255).astype(np.uint8)


def main(size: int = 96, per_cell: int = 4, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    # the case study's cues (train.toml's [data.cues]), not the generator's defaults
    settings = tomllib.loads(Path(__file__).with_name("train.toml").read_text(encoding="utf-8"))
    cues = generator_options({"cues": settings["data"]["cues"]}, nurse_doctor)["cues"]
    pad = 2
    cells = [("male", "doctor"), ("female", "doctor"), ("female", "nurse"), ("male", "nurse")]
    sheet = np.full((len(cells) * (size + pad), per_cell * 2 * (size + pad), 3), 255, np.uint8)
    for r, (gender, label) in enumerate(cells):
        for c in range(per_cell):
            p = draw_portrait(rng, label=label, gender=gender, size=size, cues=cues)
            y, x = r * (size + pad), c * 2 * (size + pad)
            sheet[y:y + size, x:x + size] = p.image
            sheet[y:y + size, x + size + pad:x + 2 * size + pad] = overlay(p.image, p.labels)
    out = Path(__file__).with_name("samples.png")
    # a 256-colour palette keeps the sheet small enough to live in the repository
    Image.fromarray(sheet).quantize(256, dither=Image.Dither.NONE).save(out, optimize=True)
    return out


if __name__ == "__main__":
    print(main())
