"""A watermark shortcut case, built in seconds: two shape classes and a watermark.

- Classes: ``square`` (a filled square) and ``cross`` (a plus sign), drawn at random places on
  a noisy 48 px background; the object's mask is the causal region (``mask:object``).
- Watermark: a white 6 x 6 box in the bottom-right corner (``bbox:watermark``, the confounder;
  1.6% of the image); the group attribute ``watermark`` says whether it is there.
- Training sets: *biased*, where the label follows the watermark (crosses carry it) and the
  shape agrees with the label only 60% of the time, so the watermark is the only reliable cue;
  *clean*, where the label is the shape and the watermark is a coin flip.
- Test set: label = shape, the watermark balanced within each class.

:func:`build_case` writes the manifests, trains both models (a tiny smallcnn) and returns
their paths; :func:`audit_config` writes an audit config over the test set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bias_audit.core.config import TrainConfig
from bias_audit.pipelines import train_classifier

SIZE = 48
MARK = (SIZE - 7, SIZE - 7, SIZE - 1, SIZE - 1)  # x0 y0 x1 y1 of the watermark box at 48 px


def mark_box(size: int) -> tuple[int, int, int, int]:
    """The watermark box at ``size`` px: the same 1.6% of the image in the same corner."""
    k = size / SIZE
    return tuple(round(v * k) for v in MARK)  # type: ignore[return-value]


CLASSES = ("cross", "square")
MEAN, STD = (0.3, 0.3, 0.3), (0.25, 0.25, 0.25)


def _draw(
    rng: np.random.Generator, shape: str, mark: bool, size: int = SIZE
) -> tuple[np.ndarray, np.ndarray]:
    k = size / SIZE
    img = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    obj = np.zeros((size, size), bool)
    s = round(14 * k)
    # the object stays clear of the watermark corner
    x, y = (
        int(rng.integers(2, size - s - round(9 * k))),
        int(rng.integers(2, size - s - round(9 * k))),
    )
    if shape == "square":
        m = round(2 * k)
        obj[y + m : y + s - m, x + m : x + s - m] = True
    else:
        w = round(2 * k)
        obj[y + s // 2 - w : y + s // 2 + w, x : x + s] = True
        obj[y : y + s, x + s // 2 - w : x + s // 2 + w] = True
    img[obj] = (230, 200, 60)
    if mark:
        x0, y0, x1, y1 = mark_box(size)
        img[y0:y1, x0:x1] = 255
    return img, obj


def _write_set(
    root: Path, name: str, rows_spec: list[tuple[str, str, bool]], seed: int, size: int = SIZE
) -> Path:
    """rows_spec: (label, shape drawn, watermark) per image."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (label, shape, mark) in enumerate(rows_spec):
        img, obj = _draw(rng, shape, mark, size)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
        Image.fromarray(obj.astype(np.uint8) * 255).save(folder / f"{i:04d}_obj.png")
        rows.append({
            "id": f"{name}{i:04d}", "image": f"{name}/{i:04d}.png", "label": label,
            "watermark": "yes" if mark else "no", "mask:object": f"{name}/{i:04d}_obj.png",
            "bbox:watermark": " ".join(map(str, mark_box(size))) if mark else "",
        })  # fmt: skip
    manifest = root / f"{name}.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def write_sets(
    root: Path, *, n_train: int = 320, n_test: int = 160, size: int = SIZE
) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    biased, clean, test = [], [], []
    for i in range(n_train):
        label = CLASSES[i % 2]
        agree = rng.random() < 0.6
        shape = label if agree else CLASSES[1 - CLASSES.index(label)]
        biased.append((label, shape, label == "cross"))
        clean.append((label, label, bool(rng.random() < 0.5)))
    for i in range(n_test):
        label = CLASSES[i % 2]
        test.append((label, label, (i // 2) % 2 == 0))
    return {
        "biased": _write_set(root, "train_biased", biased, seed=2, size=size),
        "clean": _write_set(root, "train_clean", clean, seed=3, size=size),
        "test": _write_set(root, "test", test, seed=4, size=size),
    }


def build_case(
    root: Path, *, epochs: int = 5, arch: str = "smallcnn_w8", size: int = SIZE,
    lr: float = 3e-3, n_train: int = 320,
) -> dict[str, Path]:  # fmt: skip
    """Write the case under ``root`` and train both models: manifests and checkpoints."""
    sets = write_sets(root, size=size, n_train=n_train)
    out = dict(sets)
    for name in ("biased", "clean"):
        config = TrainConfig(
            train_manifest=str(sets[name]), classes=CLASSES, arch=arch, image_size=size,
            mean=MEAN, std=STD, epochs=epochs, batch_size=32, lr=lr, seed=0,
            out=str(root / f"model_{name}"),
        )  # fmt: skip
        out[f"model_{name}"] = train_classifier(config, progress=False).checkpoint
    return out


def audit_config(root: Path, case: dict[str, Path], *, target_layer: str | None = None,
                 name: str = "audit.toml", extra: str = "") -> Path:  # fmt: skip
    layer = f'target_layer = "{target_layer}"\n' if target_layer else ""
    text = f"""title = "watermark shortcut"
[data]
manifest = "{case["test"].name}"
groups = ["watermark"]
batch_size = 32
[regions]
causal = ["object"]
confounder = ["watermark"]
[explain]
methods = ["gradcam", "gradcam++"]
{layer}[stats]
min_group_size = 20
bootstrap = 200
permutations = 200
[report]
enabled = false
gallery_per_cell = 0
{extra}
[[models]]
name = "biased"
checkpoint = "{case["model_biased"].relative_to(root)}"
[[models]]
name = "clean"
checkpoint = "{case["model_clean"].relative_to(root)}"
"""
    path = root / name
    path.write_text(text)
    return path
