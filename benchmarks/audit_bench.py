"""Throughput of a whole audit run against `explain` alone, and the cost of interventions.

    python benchmarks/audit_bench.py [--n 256] [--size 96] [--batch 32] [--arch smallcnn]

Prints images/s of: explain alone on tensors already in memory (the floor's reference); the
streaming phase of `audit` with interventions off (loading, explain, metrics, part writes);
the same with interventions on; and forward passes per batch counted with a hook. The floor
is: streaming with interventions off >= 80% of explain alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bias_audit.core.architectures import build_model  # noqa: E402
from bias_audit.core.config import AuditConfig  # noqa: E402
from bias_audit.core.maps import explain  # noqa: E402
from bias_audit.io.checkpoints import CheckpointMeta, load_model, save_checkpoint  # noqa: E402
from bias_audit.io.data import collate, load_manifest  # noqa: E402
from bias_audit.pipelines import StepSpec, audit, audit_batch  # noqa: E402
from bias_audit.pipelines._step import batch_rows, explain_batch  # noqa: E402

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def make_world(root: Path, n: int, size: int, arch: str) -> Path:
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    (root / "masks").mkdir()
    rows = []
    for i in range(n):
        img = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
        hair = np.zeros((size, size), np.uint8)
        hair[: size // 5, size // 6 : -size // 6] = 255
        Image.fromarray(img).save(root / "img" / f"{i}.png")
        Image.fromarray(hair).save(root / "masks" / f"{i}.png")
        rows.append({"id": f"s{i}", "image": f"img/{i}.png", "label": ("a", "b")[i % 2],
                     "gender": ("f", "m")[(i // 2) % 2], "mask:hair": f"masks/{i}.png",
                     "bbox:coat": f"0 {size // 2} {size} {size}"})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    torch.manual_seed(0)
    net = build_model(arch, num_classes=2)
    meta = CheckpointMeta(arch=arch, classes=("a", "b"), image_size=size, mean=MEAN, std=STD)
    save_checkpoint(root / "model.pt", net.state_dict(), meta)
    return root / "manifest.csv"


def config(root: Path, batch: int, size: int, interventions: bool, workers: int = 0) -> AuditConfig:
    return AuditConfig.from_dict(
        {
            "data": {"manifest": "manifest.csv", "groups": ["gender"], "image_size": size,
                     "batch_size": batch, "num_workers": workers},
            "regions": {"causal": ["coat"], "confounder": ["hair"]},
            "stats": {"bootstrap": 100, "permutations": 100, "min_group_size": 5},
            "interventions": {"enabled": interventions},
            "report": {"enabled": False, "gallery_per_cell": 0},
            "models": [{"name": "m", "checkpoint": "model.pt"}],
        },
        base_dir=root,
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--arch", default="smallcnn")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=0, help="[data] num_workers of the run")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = make_world(root, a.n, a.size, a.arch)
        model = load_model(checkpoint=root / "model.pt")
        ds = load_manifest(manifest, groups=["gender"], image_size=a.size, mean=MEAN, std=STD)
        batches = [collate([ds[j] for j in range(i, min(i + a.batch, a.n))])
                   for i in range(0, a.n, a.batch)]  # fmt: skip
        layer = explain(model, batches[0].images[:2]).target_layer

        def explain_only() -> float:
            t = time.perf_counter()
            for b in batches:
                explain(model, b.images, target_layer=layer)
            return time.perf_counter() - t

        def run(interventions: bool, r: int) -> tuple[float, float]:
            res = audit(config(root, a.batch, a.size, interventions, a.workers),
                        out=root / f"run{interventions}{r}", progress=False)  # fmt: skip
            return res.summary["timings"]["per_model_s"]["m"], res.summary["timings"]["total_s"]

        # The machine is shared: measure explain and the run back to back, several times, and
        # report the median of the per-pair ratios next to the best times.
        explain_only()  # warm-up
        run(False, -1)
        pairs = []
        for r in range(a.repeats):
            t_e = explain_only()
            t_s, t_t = run(False, r)
            pairs.append((t_e, t_s, t_t))
        t_explain = min(p[0] for p in pairs)
        off_stream = min(p[1] for p in pairs)
        off_total = min(p[2] for p in pairs)
        ratio = float(np.median([p[0] / p[1] for p in pairs]))
        on_stream = min(run(True, r)[0] for r in range(max(1, a.repeats // 2)))

        calls: list[int] = []
        h = model.register_forward_hook(lambda m, i, o: calls.append(1))
        spec = StepSpec(model="m", classes=("a", "b"), roles={"causal": ("coat",),
                        "confounder": ("hair",)}, target_layer=layer)  # fmt: skip
        audit_batch(model, batches[0], spec=spec)
        on_calls = len(calls)
        calls.clear()
        audit_batch(model, batches[0], spec=StepSpec(**{**spec.__dict__, "baseline": False}))
        no_base_calls = len(calls)
        calls.clear()
        audit_batch(model, batches[0], spec=StepSpec(**{**spec.__dict__, "interventions": False}))
        off_calls = len(calls)
        h.remove()

        # CPU per image of the stream's three parts, one after the other (process time, all
        # threads): what the run must overlap with explain.
        def cpu_ms(work) -> float:
            t = time.process_time()
            work()
            return 1000 * (time.process_time() - t) / a.n

        off = StepSpec(**{**spec.__dict__, "interventions": False, "discovery_size": 16,
                          "discovery_features": True})  # fmt: skip
        exps = [explain_batch(model, b, spec=off) for b in batches]
        cpu = {
            "decode": cpu_ms(lambda: [ds[j] for j in range(a.n)]),
            "explain": cpu_ms(lambda: [explain_batch(model, b, spec=off) for b in batches]),
            "metrics": cpu_ms(lambda: [batch_rows(model, b, e, spec=off)
                                       for b, e in zip(batches, exps, strict=True)]),
        }  # fmt: skip

    ips = lambda s: a.n / s  # noqa: E731
    print(f"audit bench: arch={a.arch} n={a.n} size={a.size} batch={a.batch} "
          f"threads={a.threads} workers={a.workers} (best of {a.repeats})")  # fmt: skip
    print(f"  explain alone (tensors in memory):    {ips(t_explain):8.1f} img/s")
    print(f"  audit stream, interventions off:      {ips(off_stream):8.1f} img/s "
          f"(median ratio to explain: {100 * ratio:.0f}%; floor 80%)")  # fmt: skip
    print(f"  audit stream, interventions on:       {ips(on_stream):8.1f} img/s")
    print(f"  audit end to end (stats incl.), off:  {ips(off_total):8.1f} img/s")
    print(
        f"  forward passes per batch: {off_calls} without interventions, {no_base_calls} with "
        f"interventions and baseline = false (one per role), {on_calls} with the random-patch "
        "baseline (one more per role)"
    )
    print("  CPU per image (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))


if __name__ == "__main__":
    main()
