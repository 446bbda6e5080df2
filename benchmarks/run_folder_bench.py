"""Cost of recording a finished batch in the run folder, early and late in a long run.

    python benchmarks/run_folder_bench.py [--parts 3000] [--rows 32]

Writes ``--parts`` small parts through ``RunStore.write_part`` (the part file, then the
journal line) and prints the mean milliseconds per part over the first 100, up to the
1,000th and up to the last. A cost that grows with the run would show here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bias_audit.io.run_folder import RunStore  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--parts", type=int, default=3000)
    p.add_argument("--rows", type=int, default=32)
    a = p.parse_args()
    key = {"config_hash": "c", "fingerprint": "f", "batch_size": a.rows, "models": ["m"]}
    rows = pd.DataFrame({"model": ["m"] * a.rows, "id": [f"i{j}" for j in range(a.rows)],
                         "v": range(a.rows)})  # fmt: skip
    marks = sorted({min(100, a.parts), min(1000, a.parts), a.parts})
    with tempfile.TemporaryDirectory() as tmp, RunStore(Path(tmp) / "run") as store:
        store.open(key)
        start, done = time.perf_counter(), 0
        for b in range(a.parts):
            store.write_part("m", b, rows)
            if b + 1 in marks:
                now = time.perf_counter()
                ms = 1000 * (now - start) / (b + 1 - done)
                print(f"parts {done + 1}-{b + 1}: {ms:.2f} ms a part")
                start, done = now, b + 1


if __name__ == "__main__":
    main()
