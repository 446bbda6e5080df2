"""The Ray engine against the local one: throughput at 1 and 2 workers, and Ray's overhead.

    python benchmarks/ray_bench.py [--n 400] [--size 128] [--batch 32] [--arch resnet18]

Two models of ``--arch`` (random weights, two seeds) over ``--n`` generated images, the default
audit (Grad-CAM, interventions with the random-patch baseline). It starts a local Ray
(``ray.init(num_cpus=<this machine's>)``, loopback only) once, then times whole audits
(streaming, statistics, part writes; no gallery, no report) on: the local engine, Ray with 1
worker, Ray with 2 workers. Each Ray audit includes starting its actor pool and loading the
models in the actors, not starting Ray itself (printed apart: a cluster is started once, not
per audit). Throughput is images x models per second of the audit; the floor is Ray at
1 worker >= 70% of the local engine. Every Ray run's samples table is checked against the
local one (ids and predictions equal, metrics within 1e-6), and its findings.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_bench import MEAN, STD, make_world  # noqa: E402

from bias_audit.core.architectures import build_model  # noqa: E402
from bias_audit.core.config import AuditConfig  # noqa: E402
from bias_audit.io.checkpoints import CheckpointMeta, save_checkpoint  # noqa: E402
from bias_audit.pipelines import audit  # noqa: E402


def config(root: Path, batch: int, size: int, **run) -> AuditConfig:
    return AuditConfig.from_dict(
        {
            "data": {"manifest": "manifest.csv", "groups": ["gender"], "image_size": size,
                     "batch_size": batch},
            "regions": {"causal": ["coat"], "confounder": ["hair"]},
            "stats": {"bootstrap": 100, "permutations": 100, "min_group_size": 5},
            "report": {"enabled": False, "gallery_per_cell": 0},
            "models": [{"name": "a", "checkpoint": "model.pt"},
                       {"name": "b", "checkpoint": "model_b.pt"}],
            "run": run,
        },
        base_dir=root,
    )  # fmt: skip


def _sorted(samples: pd.DataFrame) -> pd.DataFrame:
    return samples.sort_values(["model", "id"], ignore_index=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--arch", default="resnet18")
    a = p.parse_args()
    import ray

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_world(root, a.n, a.size, a.arch)
        torch.manual_seed(1)
        meta = CheckpointMeta(arch=a.arch, classes=("a", "b"), image_size=a.size, mean=MEAN,
                              std=STD)  # fmt: skip
        save_checkpoint(root / "model_b.pt", build_model(a.arch, num_classes=2).state_dict(), meta)
        images = 2 * a.n

        t = time.perf_counter()
        local = audit(config(root, a.batch, a.size), out=root / "local", progress=False)
        t_local = time.perf_counter() - t
        reference = _sorted(local.samples)

        t = time.perf_counter()
        ray.init(
            num_cpus=cpus, include_dashboard=False, object_store_memory=300 * 1024**2,
            log_to_driver=False, logging_level="warning",
        )  # fmt: skip
        t_init = time.perf_counter() - t
        timings = {}
        try:
            for workers in (1, 2):
                cfg = config(root, a.batch, a.size, engine="ray", workers=workers)
                t = time.perf_counter()
                res = audit(cfg, out=root / f"ray{workers}", progress=False)
                timings[workers] = time.perf_counter() - t
                got = _sorted(res.samples)
                assert got["id"].tolist() == reference["id"].tolist()
                assert got["pred"].tolist() == reference["pred"].tolist()
                pd.testing.assert_frame_equal(got, reference, check_exact=False, atol=1e-6, rtol=0)
                pd.testing.assert_frame_equal(
                    pd.DataFrame(res.findings), pd.DataFrame(local.findings), check_exact=False
                )
        finally:
            ray.shutdown()

    ips = lambda s: images / s  # noqa: E731
    print(f"ray bench: 2 x {a.arch}, n={a.n} size={a.size} batch={a.batch}, "
          f"{cpus} CPUs, torch threads {torch.get_num_threads()} (local)")  # fmt: skip
    print(f"  local engine:            {ips(t_local):7.1f} img/s  ({t_local:6.1f} s)")
    for w, s in timings.items():
        share = 100 * t_local / s
        print(f"  ray, {w} worker{'s' if w > 1 else ' '}:        {ips(s):7.1f} img/s  "
              f"({s:6.1f} s; {share:.0f}% of local)")  # fmt: skip
    print(
        f"  ray overhead at 1 worker: {100 * (1 - t_local / timings[1]):.0f}% of throughput "
        f"(floor: >= 70% of local); starting the local Ray itself: {t_init:.1f} s"
    )
    print(f"  scaling 1 -> 2 workers: {timings[1] / timings[2]:.2f}x")
    print("  samples.parquet and findings: equal to the local engine's at every worker count")


if __name__ == "__main__":
    main()
