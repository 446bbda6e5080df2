"""Cost of discovery's clustering against the explain pass, for N images of one model.

    python benchmarks/discovery_bench.py [--n 1000] [--size 64] [--batch 64] [--arch smallcnn_w8]

Times (1) explain alone over N random images already in memory (the reference), (2) the
clustering of the same N maps (16x16) and penultimate features split into two predicted
classes: spectral_clusters per class and view, as the discovery phase runs them. The floor
(issue 16): clustering < 10% of the explain pass. The occlusion score is not counted: it is
a fixed number of forward passes per cluster (``max_occluded`` images, three passes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bias_audit.core.architectures import build_model  # noqa: E402
from bias_audit.core.discovery import downsample_maps, spectral_clusters  # noqa: E402
from bias_audit.core.maps import explain  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--arch", default="smallcnn_w8")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=2).eval()
    images = torch.randn(
        args.n, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)
    )
    feats: list[torch.Tensor] = []
    hook = model.fc.register_forward_pre_hook(lambda _m, a: feats.append(a[0].detach()))
    t0 = time.perf_counter()
    smalls, preds = [], []
    for s in range(0, args.n, args.batch):
        exp = explain(model, images[s : s + args.batch], methods=("gradcam",))
        smalls.append(downsample_maps(exp.maps["gradcam"], size=16)[0])
        preds.append(exp.logits.argmax(dim=1))
    explain_s = time.perf_counter() - t0
    hook.remove()
    x_map = torch.cat(smalls).flatten(1).numpy()
    x_feat = torch.cat([f for f in feats if f.ndim == 2]).numpy()
    # random init gives one class for nearly all images; split in halves as two classes
    classes = np.arange(args.n) % 2

    def cluster_all() -> float:
        t1 = time.perf_counter()
        for c in (0, 1):
            idx = np.flatnonzero(classes == c)
            for x in (x_map, x_feat[: args.n]):
                spectral_clusters(x[idx], max_clusters=8, n_neighbors=10, seed=0)
        return time.perf_counter() - t1

    # the first call also pays the process's one-time scipy/scikit-learn start-up
    cold_s, cluster_s = cluster_all(), cluster_all()
    print(f"n={args.n} size={args.size} arch={args.arch} threads={torch.get_num_threads()}")
    print(f"explain pass: {explain_s:.2f} s ({args.n / explain_s:.0f} img/s)")
    print(
        f"clustering (2 classes x maps + features): {cluster_s:.2f} s (first call {cold_s:.2f} s)"
    )
    print(f"ratio: {cluster_s / explain_s:.1%} (first call {cold_s / explain_s:.1%}; floor < 10%)")
    print(f"memory kept: maps {x_map.astype(np.float16).nbytes / 1e6:.2f} MB (float16), "
          f"features {x_feat.nbytes / 1e6:.2f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
