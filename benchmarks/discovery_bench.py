"""Cost of discovery against the streaming explain pass, in a whole audit of N images.

    python benchmarks/discovery_bench.py [--n 1000] [--size 64] [--epochs 1] [--off]

Writes N watermark images (tests/discovery/watermark.py) and a small training set, trains
smallcnn_w8 for ``--epochs`` at ``--size`` px, then runs one audit (no interventions, trust or
report) with one torch thread and reads its timings: ``per_model_s`` (the streaming pass,
which now also keeps discovery's maps and features) and ``discovery_s`` (clustering both views
of every predicted class and the bounded occlusion scoring). The floor (issue 16): discovery
< 10% of the explain pass. ``--off`` runs the same audit once more with discovery disabled, for
the streaming pass's own overhead of keeping the arrays (two audits: twice the time).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bias_audit.core.config import TrainConfig  # noqa: E402
from bias_audit.pipelines import audit, train_classifier  # noqa: E402
from tests.discovery.watermark import CLASSES, MEAN, STD, write_watermark  # noqa: E402


def _config(root: Path, test: Path, ckpt: Path, size: int, *, discovery: bool) -> Path:
    path = root / f"audit_{'on' if discovery else 'off'}.toml"
    path.write_text(
        f'title = "bench"\n[data]\nmanifest = "{test}"\ngroups = ["watermark"]\n'
        f"image_size = {size}\nbatch_size = 64\n[stats]\nmin_group_size = 5\nbootstrap = 20\n"
        "permutations = 20\n[interventions]\nenabled = false\n[trust]\nenabled = false\n"
        f"[discovery]\nenabled = {'true' if discovery else 'false'}\n"
        "[report]\nenabled = false\ngallery_per_cell = 0\n"
        f'[[models]]\nname = "m"\ncheckpoint = "{ckpt}"\n'
    )
    return path


def _run(config: Path, out: Path) -> tuple[float, float, float, dict]:
    t0 = time.perf_counter()
    result = audit(config, out=out, progress=False)
    wall = time.perf_counter() - t0
    timings = result.summary["timings"]
    found = out / "discovery.json"
    parts = json.loads(found.read_text())["timings"] if found.exists() else {}
    return float(timings["per_model_s"]["m"]), float(timings["discovery_s"]), wall, parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--off", action="store_true", help="also time the audit without discovery")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the audit")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        p = {"cross": 0.05, "ring": 0.95}
        train = write_watermark(root / "train", 400, p_mark=p, seed=args.seed)
        test = write_watermark(
            root / "test", args.n, p_mark={"cross": 0.5, "ring": 0.5}, seed=args.seed + 2
        )
        cfg = TrainConfig(
            train_manifest=str(train), arch="smallcnn_w8", image_size=args.size, mean=MEAN,
            std=STD, epochs=args.epochs, batch_size=32, lr=3e-3, seed=0, out=str(root / "m"),
            classes=CLASSES,
        )  # fmt: skip
        ckpt = train_classifier(cfg, progress=False).checkpoint
        torch.set_num_threads(args.threads)
        on = _config(root, test, ckpt, args.size, discovery=True)
        stream_s, discovery_s, wall, parts = _run(on, root / "run_on")
        print(f"n={args.n} size={args.size} arch=smallcnn_w8 threads={torch.get_num_threads()}")
        print(f"streaming pass (explain + discovery's arrays): {stream_s:.2f} s")
        print(f"discovery phase (clustering + occlusion scoring): {discovery_s:.2f} s")
        print(f"  of which clustering {parts['cluster_s']:.2f} s "
              f"({parts['cluster_s'] / stream_s:.1%} of the pass; floor < 10%), "
              f"occlusion scoring {parts['occlusion_s']:.2f} s")  # fmt: skip
        print(f"ratio: {discovery_s / stream_s:.1%}; audit wall {wall:.1f} s")
        if args.off:
            off = _config(root, test, ckpt, args.size, discovery=False)
            off_s, _, off_wall, _ = _run(off, root / "run_off")
            extra = stream_s / off_s - 1
            print(f"streaming pass without discovery: {off_s:.2f} s (keeping the arrays: "
                  f"{extra:+.1%}); audit wall {off_wall:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
