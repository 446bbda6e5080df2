"""Discovery's spectral clustering of one class: with one BLAS/OpenMP thread (what the library
does) and with the thread pools' defaults.

    python benchmarks/clustering_bench.py [--n 500] [--repeats 5]

Clusters ``--n`` points of 256 dimensions (two separated blobs, like flattened 16 x 16 maps)
and ``--n`` of 512 (features) per repeat, and prints the milliseconds per class (both views)
and whether both settings give the same labels. The gap is small on an idle machine and large
when the cores are busy (run it beside another CPU-bound process to see it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bias_audit.core import discovery  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    half = a.n // 2
    maps = np.concatenate([rng.normal(size=(half, 256)), rng.normal(size=(a.n - half, 256)) + 3])
    feats = rng.normal(size=(a.n, 512))
    kw = {"max_clusters": 8, "n_neighbors": 10, "seed": 0}

    def one_thread() -> list[np.ndarray]:
        return [discovery.spectral_clusters(x, **kw).labels for x in (maps, feats)]

    def pool_defaults() -> list[np.ndarray]:  # the same work outside the one-thread limit
        return [discovery._spectral(x, **kw).labels for x in (maps, feats)]

    # Paid once per process: the thread-pool controller's inspection of the loaded libraries
    # and scikit-learn's first k-means (the same class clustered again shows what is left).
    t = time.perf_counter()
    discovery._threads()
    controller = time.perf_counter() - t
    t = time.perf_counter()
    one_thread()
    first = time.perf_counter() - t
    print(f"once per process: controller {1000 * controller:.1f} ms, first class "
          f"{1000 * first:.1f} ms (warm-up included)")  # fmt: skip
    labels = {}
    for name, run in (("one thread", one_thread), ("pool defaults", pool_defaults)):
        run()  # warm-up
        t = time.perf_counter()
        for _ in range(a.repeats):
            labels[name] = run()
        print(f"{name:>13}: {1000 * (time.perf_counter() - t) / a.repeats:7.1f} ms a class")
    same = all(np.array_equal(x, y) for x, y in zip(*labels.values(), strict=True))
    print(f"same labels: {same}")


if __name__ == "__main__":
    main()
