"""How much one random network moves the randomisation test, and what spreading the sample over
several draws buys.

    python benchmarks/draws_bench.py [--size 64] [--draws 1 4 8] [--seeds 10]

Trains a torchvision resnet18 briefly on the tests' Clever-Hans watermark case
(``tests/trust/clever_hans.py``, 256 images at ``--size`` px), then runs
``model_randomization`` on 64 other images with ``[trust] steps = 3`` for ``--seeds`` seeds
(0, 8, 16, ...: the draws of two seeds never overlap for up to 8 draws), and prints, per number
of draws, the mean, standard deviation and maximum over seeds of Grad-CAM's mean Spearman after
full top-down randomisation. The README's figures for ``[trust] draws`` come from here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bias_audit.core.trust import model_randomization  # noqa: E402
from tests.trust.clever_hans import make_images, train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--draws", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = train(
        torchvision.models.resnet18(num_classes=2), make_images(256, seed=0, size=a.size), epochs=2
    )
    images = make_images(64, seed=1, size=a.size)["images"]
    print(f"resnet18, {a.size} px, 64 images, seeds 0, 8, ... ({a.seeds})")
    for draws in a.draws:
        t = time.perf_counter()
        values = []
        for s in range(0, 8 * a.seeds, 8):
            table = model_randomization(
                model, images, steps=3, seed=s, draws=draws, n_boot=10
            ).table
            full = table[(table["order"] == "top_down") & (table["share"] == 1.0)]
            values.append(float(full["spearman"].iloc[0]))
        print(
            f"draws {draws:>2}: mean {np.mean(values):.3f}  sd {np.std(values):.3f}  "
            f"max {np.max(values):.3f}  ({time.perf_counter() - t:.0f} s)"
        )


if __name__ == "__main__":
    main()
