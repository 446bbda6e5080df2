"""Seconds per training epoch of the default smallcnn on generated images.

    PYTHONPATH=. python benchmarks/train_smallcnn.py --n 2000 --size 96 --threads 2

Writes n random PNGs (with a label and one attribute) to a temporary folder, then trains one
ERM epoch through the real data layer (decode, transform, augment) and prints the time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bias_audit.pipelines import TrainConfig, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--arch", default="smallcnn")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "img").mkdir()
        rows = []
        for i in range(args.n):
            pixels = rng.integers(0, 256, size=(args.size, args.size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "img" / f"{i}.png")
            rows.append({"image": f"img/{i}.png", "label": "ab"[i % 2], "g": "xy"[i % 3 % 2]})
        pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
        config = TrainConfig(
            train_manifest=str(root / "m.csv"),
            groups=("g",),
            arch=args.arch,
            image_size=args.size,
            epochs=1,
            batch_size=32,
            num_workers=args.workers,
            out=str(root / "run"),
        )
        t0 = time.perf_counter()
        train_classifier(config, progress=False)
        seconds = time.perf_counter() - t0
    print(
        f"{args.arch}: {args.n} images at {args.size} px, {args.threads} threads, "
        f"{args.workers} workers: {seconds:.1f} s per epoch"
    )


if __name__ == "__main__":
    main()
