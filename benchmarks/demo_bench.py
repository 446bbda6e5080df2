"""Time `make demo` (the full nurse/doctor case study) and check that threads change nothing.

    python benchmarks/demo_bench.py [--out DIR] [--seed 0] [--quick] [--threads 1,2]

Runs `bias-audit case-study nurse-doctor --strict --force` once per thread count into
DIR/threads-N, prints wall and CPU seconds per run with the stages' wall times from
case_study.json, and compares the runs' audit/samples.parquet. The target is a full run under
180 s wall on an idle 2-core machine (after set-up); on a machine shared with other jobs the
CPU seconds of the one-thread training are the better estimate of the idle wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def run(out: Path, *, seed: int, quick: bool, threads: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bias_audit", "case-study", "nurse-doctor", "--out", str(out),
           "--seed", str(seed), "--threads", str(threads), "--strict", "--force"]  # fmt: skip
    if quick:
        cmd.append("--quick")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(proc.stdout)
    if proc.returncode not in (0, 1):
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(proc.returncode)
    stages = json.loads((out / "case_study.json").read_text())["seconds"]
    return {"exit": proc.returncode, "wall": wall, "cpu": cpu, **stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="demo-bench-"))
    results = {}
    for t in (int(x) for x in args.threads.split(",")):
        results[t] = run(root / f"threads-{t}", seed=args.seed, quick=args.quick, threads=t)
        line = ", ".join(f"{k} {v:.0f}" for k, v in results[t].items())
        print(f"threads {t}: {line}", flush=True)
    samples = {t: pd.read_parquet(root / f"threads-{t}" / "audit" / "samples.parquet")
               for t in results}  # fmt: skip
    first, *rest = samples
    for t in rest:
        same = samples[first].equals(samples[t])
        print(f"samples.parquet, threads {first} vs {t}: {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
