"""Cost of the trust checks against the main explain pass over a test set.

    python benchmarks/trust_bench.py [--arch resnet18] [--size 112] [--n 1000] [--batch 32]
                                     [--samples 32 64] [--repeats 3] [--steps 2]

Times, on generated images already in memory (each figure the median of ``--repeats`` runs):
the main explain pass (Grad-CAM, the [explain] default) over ``--n`` images in batches; then,
per sample size, the trust checks with the [trust] defaults, read from ``TrustConfig()``
(randomisation in ``steps`` groups top-down and bottom-up with the sample spread over ``draws``
random draws, ``layers_before`` earlier layers from one pass, faithfulness at ``fractions``),
in the audit's order: the layer check's multi-layer pass also gives the target layer's maps the
other two checks reuse. The target: at the default sample (64) the checks cost at most the main
pass over 1,000 images (the last line prints the ratio and whether it holds), and their cost
follows the sample, not the dataset.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bias_audit.core.architectures import build_model  # noqa: E402
from bias_audit.core.config import TrustConfig  # noqa: E402
from bias_audit.core.maps import explain  # noqa: E402
from bias_audit.core.trust import (  # noqa: E402
    faithfulness,
    layer_sensitivity,
    model_randomization,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    defaults = TrustConfig()
    ap.add_argument("--samples", type=int, nargs="+", default=[32, defaults.sample])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=defaults.steps, help="[trust] steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=2).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.n, 3, args.size, args.size, generator=gen)
    s = args.size
    masks = torch.zeros(args.n, 2, s, s, dtype=torch.bool)
    masks[:, 0, s // 4 : s // 2, s // 4 : s // 2] = True
    masks[:, 1, -s // 8 :, -s // 8 :] = True
    present = torch.ones(args.n, 2, dtype=torch.bool)
    roles = {"causal": ("object",), "confounder": ("mark",)}

    def main_pass() -> float:
        t = time.perf_counter()
        for start in range(0, args.n, args.batch):
            explain(model, images[start : start + args.batch], methods=("gradcam",))
        return time.perf_counter() - t

    def checks(k: int) -> dict[str, float]:
        x = images[:k]
        parts = {}
        # As the audit runs them: the layer check's one multi-layer pass gives the target
        # layer's maps, which the other two checks reuse.
        t = time.perf_counter()
        lay = layer_sensitivity(
            model, x, masks[:k], present[:k], ("mark", "object"), roles,
            count=defaults.layers_before, batch_size=args.batch,
        )  # fmt: skip
        exp = lay.explained
        parts["layers"] = time.perf_counter() - t
        t = time.perf_counter()
        model_randomization(
            model, x, methods=("gradcam",), steps=args.steps, draws=defaults.draws,
            explained=exp, batch_size=args.batch,
        )  # fmt: skip
        parts["randomization"] = time.perf_counter() - t
        t = time.perf_counter()
        faithfulness(
            model, x, methods=("gradcam",), fractions=defaults.fractions, explained=exp,
            batch_size=args.batch,
        )  # fmt: skip
        parts["faithfulness"] = time.perf_counter() - t
        return parts

    print(f"{args.arch} {args.size}px, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} runs")  # fmt: skip
    main_s = statistics.median(main_pass() for _ in range(args.repeats))
    print(f"main explain pass, {args.n} images: {main_s:.2f} s")
    ratios: dict[int, float] = {}
    for k in args.samples:
        runs = [checks(k) for _ in range(args.repeats)]
        parts = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        total = statistics.median(sum(r.values()) for r in runs)
        detail = ", ".join(f"{k2} {v:.2f} s" for k2, v in parts.items())
        print(
            f"trust checks, sample {k}: {total:.2f} s ({total / main_s:.2f} x the main pass; "
            f"{detail})"
        )
        ratios[k] = total / main_s
    if defaults.sample in ratios:
        r = ratios[defaults.sample]
        verdict = "holds" if r <= 1.0 else "FAILS"
        print(
            f"target (default sample {defaults.sample}, {args.n} images): trust / main = "
            f"{r:.2f}, at most 1.00: {verdict}"
        )


if __name__ == "__main__":
    main()
