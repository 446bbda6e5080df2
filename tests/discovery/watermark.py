"""A watermark shortcut world: generated data, a biased and a clean tiny model, an audit config.

Each image is 48x48 noise with a faint grey cross or ring (the label) somewhere in the middle.
A 9x9 white "watermark" with a dark centre sits in the bottom-right corner of some images
(attribute ``watermark``: "yes"/"no"). In the biased training set the watermark is on 95% of
the rings and 5% of the crosses, so it predicts "ring"; in the clean training set and in the
test set it is on half of each class. No manifest has mask or bbox columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bias_audit.pipelines import TrainConfig, train_classifier

SIZE = 48
MARK = 9
CLASSES = ("cross", "ring")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _shape(kind: str) -> np.ndarray:
    yy, xx = np.mgrid[:13, :13] - 6
    if kind == "cross":
        return (np.abs(yy) <= 1) | (np.abs(xx) <= 1)
    r = np.sqrt(yy**2 + xx**2)
    return (r >= 4) & (r <= 6)


def write_watermark(
    folder: Path, n: int, *, p_mark: dict[str, float], seed: int, ink: int = 100
) -> Path:
    """Write ``n`` PNGs and ``manifest.csv`` (image, label, watermark) into ``folder``.

    ``p_mark[label]`` is the share of that class's images that carry the watermark (exactly
    rounded, then shuffled), so a share of 0.5 balances it.
    """
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    labels = [CLASSES[i % 2] for i in range(n)]
    marked = np.zeros(n, dtype=bool)
    for c in CLASSES:
        idx = np.array([i for i in range(n) if labels[i] == c])
        k = int(round(len(idx) * p_mark[c]))
        marked[rng.permutation(idx)[:k]] = True
    rows = []
    for i in range(n):
        img = rng.integers(0, 120, size=(SIZE, SIZE, 3)).astype(np.uint8)
        y, x = rng.integers(6, SIZE - MARK - 14, size=2)
        img[y : y + 13, x : x + 13][_shape(labels[i])] = ink
        if marked[i]:
            c0 = SIZE - MARK - 1
            img[c0 : c0 + MARK, c0 : c0 + MARK] = 255
            img[c0 + 3 : c0 + 6, c0 + 3 : c0 + 6] = 0
        Image.fromarray(img).save(folder / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "label": labels[i],
                     "watermark": "yes" if marked[i] else "no"})  # fmt: skip
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def train(manifest: Path, out: Path, *, epochs: int = 4, seed: int = 0) -> Path:
    """Train smallcnn_w8 on ``manifest``; return the checkpoint path."""
    cfg = TrainConfig(
        train_manifest=str(manifest), arch="smallcnn_w8", image_size=SIZE, mean=MEAN, std=STD,
        epochs=epochs, batch_size=32, lr=3e-3, seed=seed, out=str(out), classes=CLASSES,
    )  # fmt: skip
    return train_classifier(cfg, progress=False).checkpoint


def build_world(
    root: Path,
    *,
    n_train: int = 600,
    n_test: int = 400,
    ink: int = 100,
    p_biased: float = 0.95,
    seed: int = 1,
) -> dict[str, Path]:
    """Data, both models and ``audit.toml`` (no [regions]) under ``root``.

    ``ink``: the shapes' grey level on noise of 0-119 (lower: a harder shape, a more biased
    model); ``p_biased``: the share of training rings with the watermark (and of crosses
    without it) for the biased model; ``seed``: of the data (the three sets use seed..seed+2).
    """
    p = {"cross": 1 - p_biased, "ring": p_biased}
    half = {"cross": 0.5, "ring": 0.5}
    biased = write_watermark(root / "train_biased", n_train, p_mark=p, seed=seed, ink=ink)
    clean = write_watermark(root / "train_clean", n_train, p_mark=half, seed=seed + 1, ink=ink)
    test = write_watermark(root / "test", n_test, p_mark=half, seed=seed + 2, ink=ink)
    models = {"biased": train(biased, root / "m_biased"), "clean": train(clean, root / "m_clean")}
    config = root / "audit.toml"
    config.write_text(
        f'title = "watermark"\n[data]\nmanifest = "{test}"\ngroups = ["watermark"]\n'
        f"image_size = {SIZE}\nbatch_size = 64\n[stats]\nmin_group_size = 5\nbootstrap = 50\n"
        "permutations = 50\n[report]\nenabled = false\ngallery_per_cell = 0\n"
        + "".join(f'[[models]]\nname = "{k}"\ncheckpoint = "{v}"\n' for k, v in models.items())
    )
    return {"root": root, "test": test, "config": config, **models}
