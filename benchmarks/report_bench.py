"""Report size and render time for a synthetic 10,000-image, two-model run folder.

Usage: PYTHONPATH=. python benchmarks/report_bench.py [--images 10000] [--out /tmp/report-bench]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bias_audit.report import render_report  # noqa: E402
from tests.report.runfolder import make_run_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/report-bench"))
    args = parser.parse_args()
    run = make_run_folder(
        args.out, n_per_cell=args.images // 4, small=None, gallery_per_cell=20, image_size=224
    )
    start = time.perf_counter()
    path = render_report(run, max_per_cell=20)
    took = time.perf_counter() - start
    size = path.stat().st_size
    print(f"{args.images} images x 2 models: {size / 2**20:.1f} MiB in {took:.1f} s -> {path}")


if __name__ == "__main__":
    main()
