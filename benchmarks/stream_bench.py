"""Where the audit's streaming phase loses time against explain alone, part by part.

    python benchmarks/stream_bench.py [--arch resnet18] [--size 128] [--threads 2]

Each line: images/s and CPU per image (process time, all threads) of the streaming loop with
one more of its parts, the audit's own pieces (the prefetch thread, the metrics thread with one
OpenMP thread): explain alone; explain with the audit's step; with the metrics beside it; with
the decoding beside it; with both (the audit's loop without the part writes); then decoding
and metrics alone on one thread. Best of 3 after a warm-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_bench import MEAN, STD, make_world  # noqa: E402

from bias_audit.core._threads import one_thread_here  # noqa: E402
from bias_audit.core.maps import explain  # noqa: E402
from bias_audit.io.checkpoints import load_model  # noqa: E402
from bias_audit.io.data import collate, load_manifest  # noqa: E402
from bias_audit.pipelines._step import StepSpec, batch_rows, explain_batch  # noqa: E402
from bias_audit.pipelines._stream import _Prefetch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = make_world(root, a.n, a.size, a.arch)
        model = load_model(checkpoint=root / "model.pt")
        ds = load_manifest(manifest, groups=["gender"], image_size=a.size, mean=MEAN, std=STD)
        idx = [list(range(i, min(i + a.batch, a.n))) for i in range(0, a.n, a.batch)]
        batches = [collate([ds[j] for j in b]) for b in idx]
        layer = explain(model, batches[0].images[:2]).target_layer
        roles = {"causal": ("coat",), "confounder": ("hair",)}
        spec = StepSpec(model="m", classes=("a", "b"), roles=roles, groups=("gender",),
                        target_layer=layer, interventions=False, discovery_size=16,
                        discovery_features=True)  # fmt: skip
        exps = [explain_batch(model, b, spec=spec) for b in batches]

        def timed(name: str, work) -> None:
            work()
            runs = []
            for _ in range(3):
                t, c = time.perf_counter(), time.process_time()
                work()
                runs.append((time.perf_counter() - t, time.process_time() - c))
            wall, cpu = min(runs)
            print(f"  {name:38s} {a.n / wall:8.1f} img/s   CPU {1000 * cpu / a.n:.2f} ms/img")

        def loop(decode: bool, rows: bool) -> None:
            source = (_Prefetch(DataLoader(ds, batch_sampler=idx, collate_fn=collate))
                      if decode else iter(batches))  # fmt: skip
            pool = ThreadPoolExecutor(1, initializer=one_thread_here)
            previous = None
            try:
                for b in source:
                    out = explain_batch(model, b, spec=spec)
                    if rows:
                        if previous is not None:
                            previous.result()
                        previous = pool.submit(batch_rows, model, b, out, spec=spec)
                if previous is not None:
                    previous.result()
            finally:
                pool.shutdown()
                if isinstance(source, _Prefetch):
                    source.close()

        print(f"stream bench: arch={a.arch} size={a.size} n={a.n} batch={a.batch} "
              f"threads={a.threads}")  # fmt: skip
        timed("explain alone", lambda: [explain(model, b.images, target_layer=layer)
                                        for b in batches])  # fmt: skip
        timed("explain (the audit's step)", lambda: loop(False, False))
        timed("+ metrics thread", lambda: loop(False, True))
        timed("+ decoding thread", lambda: loop(True, False))
        timed("+ both (the audit's loop, no writes)", lambda: loop(True, True))
        torch.set_num_threads(1)
        timed("decoding alone, 1 thread", lambda: [collate([ds[j] for j in b]) for b in idx])
        pairs = list(zip(batches, exps, strict=True))
        timed("metrics alone, 1 thread", lambda: [batch_rows(model, b, e, spec=spec)
                                                  for b, e in pairs])  # fmt: skip


if __name__ == "__main__":
    main()
