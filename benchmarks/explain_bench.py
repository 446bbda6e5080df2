"""Time and peak memory of explain against inference, pytorch-grad-cam and captum.

Each case runs in a fresh subprocess. Peak memory is the growth of the peak RSS over the
process's RSS once model and input are built (Linux: /proc/self/clear_refs resets the peak);
time is the median of --repeats runs after one warm-up.

    PYTHONPATH=. python benchmarks/explain_bench.py            # ResNet-50, 224 px, batch 16
    PYTHONPATH=. python benchmarks/explain_bench.py --repeats 1 --batch 4   # a quick check
    PYTHONPATH=. python benchmarks/explain_bench.py --arch vit_b_16 --cases abc   # the ViT row

Each table is labelled with its allocator. The first is the user's default: nothing in the
environment; explain applies the library's own malloc setting (``bias_audit.core._malloc``),
captum, pytorch-grad-cam and plain inference keep glibc's. The second gives the same setting
to every case through GLIBC_TUNABLES, so that it compares computation alone.

Cases:
    a  inference-only forward pass (torch.inference_mode)
    b  bias_audit explain(..., methods=("gradcam", "gradcam++"), target_layer=<layer>)
    c  pytorch-grad-cam GradCAM + GradCAMPlusPlus on <layer>, same targets
    d  captum LayerGradCam on <layer> (+ bilinear upsampling), same targets (CNNs only: captum
       takes channels at dimension 1)
    e  (a) with the images in channels-last storage, as explain hands them to a CNN on the CPU
       (``bias_audit.core.maps.fast_layout``): b / e is explain's own cost over the forward
       pass it runs

<layer> is "layer4" for ResNets and the last block's ln_1 (class token dropped, 14 x 14) for
torchvision ViTs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "a": "inference forward",
    "b": "explain gradcam+gradcam++",
    "c": "pytorch-grad-cam GradCAM+GradCAM++",
    "d": "captum LayerGradCam",
    "e": "inference, channels-last input",
}


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _worker(case: str, args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(weights=None).eval()
    reshape = None
    if isinstance(model, torchvision.models.VisionTransformer):
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # zero-initialised
        layer_name = f"encoder.layers.encoder_layer_{len(model.encoder.layers) - 1}.ln_1"
        side = args.size // model.patch_size

        def reshape(t):  # pytorch-grad-cam's ViT reshape, with the grid of this model
            return t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, side, side)

    else:
        layer_name = "layer4"
    layer = model.get_submodule(layer_name)
    images = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():  # not inference_mode: captum cannot use inference tensors
        targets = model(images).argmax(1)

    if case == "a":

        def run() -> None:
            with torch.inference_mode():
                model(images)

    elif case == "e":
        last = images.contiguous(memory_format=torch.channels_last)

        def run() -> None:
            with torch.inference_mode():
                model(last)

    elif case == "b":
        from bias_audit.core.maps import explain

        def run() -> None:
            explain(
                model, images, ("gradcam", "gradcam++"), target_layer=layer_name, targets=targets
            )

    elif case == "c":
        from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]

        def run() -> None:
            for cls in (GradCAM, GradCAMPlusPlus):
                with cls(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
                    cam(images, targets=pgc_targets)

    elif case == "d":
        from captum.attr import LayerGradCam

        def run() -> None:
            gc_ = LayerGradCam(model, layer)
            maps = gc_.attribute(images, target=targets, relu_attributions=True)
            F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)
            model.zero_grad(set_to_none=True)

    else:
        raise SystemExit(f"unknown case {case!r}")

    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = _rss_kb("VmRSS")
    run()  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = _rss_kb("VmHWM") - base
    return {
        "case": case,
        "time_s": statistics.median(times),
        "min_s": min(times),
        "peak_mb": peak / 1024,
    }


TUNED = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824"
ALLOCATORS = {
    "default": "the user's default: no malloc setting in the environment (explain applies the "
    "library's own, bias_audit.core._malloc; the other cases keep glibc's defaults)",
    "tuned": f"GLIBC_TUNABLES={TUNED} for every case (the library's setting, given to all)",
}


def _measure(args: argparse.Namespace, allocator: str) -> dict[str, dict] | None:
    results = {}
    for case in args.cases:
        cmd = [sys.executable, __file__, "--worker", case]
        for opt in ("arch", "batch", "size", "threads", "repeats"):
            cmd += [f"--{opt}", str(getattr(args, opt))]
        env = {
            k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BIAS_AUDIT_MALLOC")
        }
        if allocator == "tuned":
            env["GLIBC_TUNABLES"] = TUNED
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if out.returncode != 0:
            print(f"case {case} failed:\n{out.stderr}", file=sys.stderr)
            return None
        results[case] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def _print(args: argparse.Namespace, allocator: str, results: dict[str, dict]) -> None:
    print(f"allocator: {allocator}: {ALLOCATORS[allocator]}")
    print(f"{'case':<42} {'median (s)':>10} {'min (s)':>8} {'peak RSS growth (MB)':>21}")
    for case, r in results.items():
        label = f"({case}) {CASES[case]}"
        print(f"{label:<42} {r['time_s']:>10.3f} {r['min_s']:>8.3f} {r['peak_mb']:>21.1f}")

    def ratio(x: str, y: str, key: str) -> float | None:
        if x in results and y in results and results[y][key] > 0:
            return results[x][key] / results[y][key]
        return None

    # On a shared machine the min is the steadier figure; the floors are judged on the median.
    checks = [
        ("time   b / a", "b", "a", "time_s", "<=", 1.2),
        ("memory b / a", "b", "a", "peak_mb", "<=", 1.15),
        ("time   c / b", "c", "b", "time_s", ">=", 4.0),
        ("time   b / d", "b", "d", "time_s", "<=", 1.0),
        ("memory b / d", "b", "d", "peak_mb", "<=", 0.6),
        ("time   b / e", "b", "e", "time_s", "<=", 1.2),
    ]
    print(f"{'ratio':<14} {'median':>7} {'(min)':>7}  floor")
    for name, x, y, key, op, floor in checks:
        value = ratio(x, y, key)
        if value is None:
            continue
        by_min = ratio(x, y, "min_s") if key == "time_s" else None
        shown = f"{by_min:7.2f}" if by_min is not None else " " * 7
        ok = value <= floor if op == "<=" else value >= floor
        print(f"{name:<14} {value:>7.2f} {shown}  {op} {floor}  {'ok' if ok else 'MISSED'}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default="abcde")
    parser.add_argument(
        "--allocator",
        choices=("both", *ALLOCATORS),
        default="both",
        help="default: the user's environment (reported first); tuned: GLIBC_TUNABLES for all",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args.worker, args)))
        return 0

    print(
        f"{args.arch}, {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, "
        f"each case in a fresh process, median of {args.repeats} after a warm-up"
    )
    print()
    for allocator in ALLOCATORS if args.allocator == "both" else (args.allocator,):
        results = _measure(args, allocator)
        if results is None:
            return 1
        _print(args, allocator, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
