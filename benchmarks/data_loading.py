"""Time manifest validation and per-sample decoding + transform.

    PYTHONPATH=. python benchmarks/data_loading.py [--n 64] [--size 224] [--workers 0 2]

Writes N synthetic 640x480 JPEG images, each with a mask PNG and a box, to a temporary folder.
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
from torch.utils.data import DataLoader

from bias_audit.io.data import collate, load_manifest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for i in range(args.n):
            pixels = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"{i}.jpg", quality=90)
            mask = np.zeros((480, 640), dtype=np.uint8)
            mask[100:300, 200:400] = 255
            Image.fromarray(mask).save(root / f"{i}_m.png")
            rows.append({"image": f"{i}.jpg", "label": f"c{i % 2}", "g": f"g{i % 3}",
                         "mask:hair": f"{i}_m.png", "bbox:coat": "10 20 300 400"})  # fmt: skip
        pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
        t0 = time.perf_counter()
        ds = load_manifest(root / "m.csv", groups=["g"], image_size=args.size)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds.fingerprint()
        t_fp = time.perf_counter() - t0
        print(f"load_manifest: {1e3 * t_load / args.n:.2f} ms/row; fingerprint {t_fp:.3f} s")
        for workers in args.workers:
            loader = DataLoader(ds, batch_size=16, collate_fn=collate, num_workers=workers)
            t0 = time.perf_counter()
            n = sum(len(b) for b in loader)
            dt = time.perf_counter() - t0
            print(f"DataLoader(num_workers={workers}): {n / dt:.1f} samples/s "
                  f"({1e3 * dt / n:.2f} ms/sample, incl. worker start-up)")  # fmt: skip


if __name__ == "__main__":
    main()
