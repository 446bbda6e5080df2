"""Time of the per-sample metrics against the explain pass that produced the maps.

The issue's floor: ``sample_metrics`` (all metrics incl. loc_iou) for 256 maps at 224x224
with four regions (+ roles) must take under 5% of the explain pass.

The explain pass is ``bias_audit.explain.explain(..., methods=("gradcam",))`` on a ResNet-50
(weights=None) when that package is available; otherwise a hand-built reference: a forward
pass plus a backward pass from the logit to layer4 only (parameters frozen), which is the
cheapest pass any Grad-CAM can make. By default the explain pass is timed on
``--explain-images`` images and scaled linearly to 256 (batch 16), to spare a shared CPU.

    PYTHONPATH=$PWD python benchmarks/metrics_bench.py [--threads 1] [--explain-images 32]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torchvision.models import resnet50

from bias_audit.core.metrics import sample_metrics

N, SIZE, BATCH = 256, 224, 16
REGIONS = ("coat", "face", "hair", "stethoscope")
ROLES = {"causal": ["coat", "stethoscope"], "confounder": ["face", "hair"]}


def make_inputs(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Grad-CAM-like maps: a 7x7 layer map upsampled bilinearly, then ReLU.
    coarse = torch.randn(N, 1, 7, 7, generator=gen)
    maps = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    maps = maps.squeeze(1).clamp_min(0)
    masks = torch.zeros(N, len(REGIONS), SIZE, SIZE, dtype=torch.bool)
    corners = torch.randint(0, SIZE - 80, (N, len(REGIONS), 2), generator=gen).tolist()
    sides = torch.randint(16, 80, (N, len(REGIONS), 2), generator=gen).tolist()
    for i in range(N):
        for r in range(len(REGIONS)):
            (y, x), (h, w) = corners[i][r], sides[i][r]
            masks[i, r, y : y + h, x : x + w] = True
    present = torch.rand(N, len(REGIONS), generator=gen) > 0.1
    return maps, masks, present


def time_metrics(maps, masks, present, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample_metrics(maps, masks, present, REGIONS, ROLES)
        best = min(best, time.perf_counter() - t0)
    return best


def _reference_pass(model: torch.nn.Module, images: torch.Tensor) -> None:
    saved = {}

    def hook(_module, _inputs, output):
        # Detach and re-attach: the graph starts at layer4, as with frozen parameters.
        saved["a"] = output.detach().requires_grad_(True)
        return saved["a"]

    handle = model.layer4.register_forward_hook(hook)
    try:
        logits = model(images)
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        (grad,) = torch.autograd.grad(score, saved["a"])
        (saved["a"] * grad.mean(dim=(2, 3), keepdim=True)).sum(1).clamp_min(0)
    finally:
        handle.remove()


def time_explain(n_images: int, gen: torch.Generator) -> tuple[float, str]:
    model = resnet50(weights=None).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        from bias_audit.core.maps import explain  # the real engine, once merged

        def run(x):
            explain(model, x, methods=("gradcam",), target_layer="layer4")

        what = "bias_audit.explain.explain(gradcam, layer4)"
    except ImportError:

        def run(x):
            _reference_pass(model, x)

        what = "hand-built reference: forward + backward to layer4 (explain not available)"
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen)
    run(images[:2])  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < n_images:
        run(images)
        done += BATCH
    return (time.perf_counter() - t0) * N / done, what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--explain-images", type=int, default=32, help="timed, scaled to 256")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    maps, masks, present = make_inputs(gen)
    metrics_s = time_metrics(maps, masks, present, args.repeats)
    explain_s, what = time_explain(min(max(args.explain_images, BATCH), N), gen)
    print(f"threads: {args.threads}")
    print(
        f"sample_metrics, {N} maps {SIZE}x{SIZE}, {len(REGIONS)} regions + 3 roles, "
        f"all metrics: {metrics_s:.3f} s (best of {args.repeats})"
    )
    print(
        f"explain pass ({what}), {N} images, batch {BATCH}: {explain_s:.1f} s"
        f" (timed on {max(args.explain_images, BATCH)} images, scaled)"
    )
    share = metrics_s / explain_s
    verdict = "OK" if share < 0.05 else "FAIL"
    print(f"metrics / explain: {100 * share:.2f}%  (floor: < 5%) -> {verdict}")


if __name__ == "__main__":
    main()
