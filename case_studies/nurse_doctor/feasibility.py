"""Feasibility study for the nurse/doctor case study: are the acceptance numbers reachable on a CPU?

A self-contained stand-in for the real pipeline (it uses only the generator, not the data layer,
trainer or audit): load the generated splits into memory, train three small GAP+linear CNNs
(ERM on train_biased, ERM on train_balanced, CE + lambda * Grad-CAM mass on face+hair on
train_biased), then measure per-cell test accuracy and Grad-CAM mass per region and role.

Run (from the repository root):
    PYTHONPATH=. python case_studies/nurse_doctor/feasibility.py --out /tmp/nd --threads 2
    PYTHONPATH=. python case_studies/nurse_doctor/feasibility.py --out /tmp/ndq --quick
Prints one JSON line per model and a verdict against the issue's acceptance criteria.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from bias_audit.case_studies import nurse_doctor as nd

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
CONFOUNDER = ("face", "hair")
CAUSAL = ("coat", "stethoscope")


class SmallCNN(nn.Module):
    """Four conv/BN/ReLU stages, three 2x poolings (96 px in, a 12x12 map out), GAP + linear."""

    def __init__(self, width: int = 16, num_classes: int = 2) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.features(x)
        return self.fc(a.mean((2, 3))), a


def load_split(manifest: Path) -> dict[str, object]:
    import csv

    rows = list(csv.DictReader(manifest.open(encoding="utf-8")))
    root = manifest.parent
    images = np.stack([np.asarray(Image.open(root / r["image"]).convert("RGB")) for r in rows])
    size = images.shape[1]
    masks = np.zeros((len(rows), len(nd.REGIONS), size, size), bool)
    for i, r in enumerate(rows):
        for j, region in enumerate(nd.REGIONS):
            if r[f"mask:{region}"]:
                masks[i, j] = np.asarray(Image.open(root / r[f"mask:{region}"])) > 0
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    return {"x": (x - MEAN) / STD, "y": torch.tensor([nd.CLASSES.index(r["label"]) for r in rows]),
            "gender": [r["gender"] for r in rows], "label": [r["label"] for r in rows],
            "masks": torch.from_numpy(masks)}


def role_mask(masks: Tensor, names: tuple[str, ...]) -> Tensor:
    idx = [nd.REGIONS.index(n) for n in names]
    return masks[:, idx].any(1)


def gradcam(model: SmallCNN, x: Tensor, target: Tensor | None = None, *,
            create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Grad-CAM at the last conv stage for ``target`` (predicted if None): (N,h,w) maps, logits."""
    logits, a = model(x)
    if target is None:
        target = logits.argmax(1)
    score = logits.gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(score, a, create_graph=create_graph)
    cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1))
    return cam, logits


def mass(cam: Tensor, region: Tensor) -> Tensor:
    """Share of each map inside ``region`` (N,S,S) bool, map upsampled bilinearly; NaN if empty."""
    up = F.interpolate(cam[:, None], size=region.shape[-2:], mode="bilinear",
                       align_corners=False)[:, 0].clamp_min(0)
    total = up.sum((1, 2))
    m = (up * region).sum((1, 2)) / total
    return torch.where((total > 0) & region.any(-1).any(-1), m, torch.nan)


def train(data: dict, *, width: int, epochs: int, lr: float, batch: int, seed: int,
          lam: float = 0.0, every_class: bool = False,
          penalty: str = "gradcam") -> tuple[SmallCNN, float]:
    torch.manual_seed(seed)
    model = SmallCNN(width)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    x, y, masks = data["x"], data["y"], data["masks"]
    conf = role_mask(masks, CONFOUNDER).float()[:, None]
    n = len(y)
    steps = epochs * ((n + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb, yb = x[idx], y[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            if lam > 0 and penalty == "input_grad":
                # right for the right reasons: no input gradient inside the confounder regions
                cb = torch.where(flip[:, None, None, None], conf[idx].flip(-1), conf[idx])
                xb = xb.clone().requires_grad_(True)
                logits, _ = model(xb)
                logp = F.log_softmax(logits, 1).sum()
                (gx,) = torch.autograd.grad(logp, xb, create_graph=True)
                pen = (cb * gx).pow(2).sum((1, 2, 3)).mean()
                loss = F.cross_entropy(logits, yb) + lam * pen
            elif lam > 0:
                cb = torch.where(flip[:, None, None, None], conf[idx].flip(-1), conf[idx])
                # Penalising only the label's map leaves a loophole: the confounder can still
                # raise the *other* class's score. every_class closes it.
                targets = ([torch.full_like(yb, c) for c in range(len(nd.CLASSES))]
                           if every_class else [yb])
                pen = 0.0
                for t in targets:
                    cam, logits = gradcam(model, xb, t, create_graph=True)
                    # masks pooled to the map's resolution: cheaper than upsampling every map
                    r = F.adaptive_avg_pool2d(cb, cam.shape[-2:])[:, 0]
                    pen = pen + ((cam * r).sum((1, 2)) / (cam.sum((1, 2)) + 1e-6)).mean()
                loss = F.cross_entropy(logits, yb) + lam * pen / len(targets)
            else:
                logits, _ = model(xb)
                loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model, time.perf_counter() - t0


def evaluate(model: SmallCNN, data: dict, batch: int = 200) -> dict[str, object]:
    preds, conf_m, caus_m = [], [], []
    for i in range(0, len(data["y"]), batch):
        xb = data["x"][i:i + batch].requires_grad_(False)
        cam, logits = gradcam(model, xb)
        mb = data["masks"][i:i + batch]
        preds.append(logits.argmax(1))
        conf_m.append(mass(cam.detach(), role_mask(mb, CONFOUNDER)))
        caus_m.append(mass(cam.detach(), role_mask(mb, CAUSAL)))
    pred = torch.cat(preds)
    correct = (pred == data["y"]).numpy()
    cm, am = torch.cat(conf_m).numpy(), torch.cat(caus_m).numpy()
    cells = {}
    for g in nd.GENDERS:
        for c in nd.CLASSES:
            sel = np.array([(a == g and b == c) for a, b in zip(data["gender"], data["label"],
                                                                 strict=True)])
            cells[f"{g} / {c}"] = round(float(correct[sel].mean()), 3)
    return {"acc": round(float(correct.mean()), 3), "cells": cells,
            "mass_confounder": round(float(np.nanmean(cm)), 3),
            "mass_causal": round(float(np.nanmean(am)), 3), "_conf": cm}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cues", default="{}", help='JSON overrides of Cues, e.g. {"pale_scrubs": 0.7}')
    p.add_argument("--skew", default=None, help="share of male doctors, female nurses: 0.9,0.95")
    p.add_argument("--every-class", action="store_true",
                   help="penalise the confounder mass of every class's map, not only the label's")
    p.add_argument("--penalty", choices=("gradcam", "input_grad"), default="gradcam")
    p.add_argument("--models", default="biased,debiased_data,debiased_penalty")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = args.size or (64 if args.quick else 96)
    counts = nd.default_counts(quick=args.quick)
    if args.n_train:
        counts.update(train_biased=args.n_train, train_balanced=args.n_train)
    if args.n_test:
        counts.update(test=args.n_test)
    epochs = args.epochs or (6 if args.quick else 8)

    t0 = time.perf_counter()
    cues = nd.Cues(**json.loads(args.cues))
    if args.skew:
        dm, nf = (float(v) for v in args.skew.split(","))
        nd.SKEW.update(doctor=("male", dm), nurse=("female", nf))
    manifests = nd.generate(args.out, image_size=size, n=counts, seed=args.seed, cues=cues,
                            force=True)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    splits = {s: load_split(manifests[s]) for s in ("train_biased", "train_balanced", "test")}
    t_load = time.perf_counter() - t0
    print(json.dumps({"cues": json.loads(args.cues), "skew": nd.SKEW, "size": size,
                      "counts": counts, "epochs": epochs, "width": args.width,
                      "lr": args.lr, "batch": args.batch, "lam": args.lam,
                      "threads": args.threads, "generate_s": round(t_gen, 1),
                      "load_s": round(t_load, 1)}), flush=True)
    specs = {"biased": ("train_biased", 0.0), "debiased_data": ("train_balanced", 0.0),
             "debiased_penalty": ("train_biased", args.lam)}
    results = {}
    for name in args.models.split(","):
        split, lam = specs[name]
        model, t_train = train(splits[split], width=args.width, epochs=epochs, lr=args.lr,
                               batch=args.batch, seed=args.seed, lam=lam,
                               every_class=args.every_class, penalty=args.penalty)
        t0 = time.perf_counter()
        res = evaluate(model, splits["test"])
        res["train_s"] = round(t_train, 1)
        res["eval_s"] = round(time.perf_counter() - t0, 1)
        results[name] = res
        print(json.dumps({"model": name, **{k: v for k, v in res.items() if k != "_conf"}}),
              flush=True)
    verdict(results)
    return 0


def verdict(results: dict[str, dict]) -> None:
    checks = []
    b = results.get("biased")
    if b:
        stereo = [b["cells"]["male / doctor"], b["cells"]["female / nurse"]]
        counter = [b["cells"]["female / doctor"], b["cells"]["male / nurse"]]
        checks.append(("biased stereotypical >= .95", min(stereo) >= 0.95))
        checks.append(("biased counter-stereotypical <= .75", max(counter) <= 0.75))
    for name in ("debiased_data", "debiased_penalty"):
        d = results.get(name)
        if not d:
            continue
        checks.append((f"{name} every cell >= .90", min(d["cells"].values()) >= 0.90))
        checks.append((f"{name} causal > confounder", d["mass_causal"] > d["mass_confounder"]))
        if b:
            ratio = b["mass_confounder"] / max(d["mass_confounder"], 1e-9)
            both = ~np.isnan(b["_conf"]) & ~np.isnan(d["_conf"])
            try:
                from scipy.stats import wilcoxon

                pv = float(wilcoxon(b["_conf"][both], d["_conf"][both]).pvalue)
            except ValueError:
                pv = float("nan")
            checks.append((f"confounder mass biased/{name} = {ratio:.2f} >= 2, p={pv:.1e}",
                           ratio >= 2 and pv < 1e-3))
    for text, ok in checks:
        print(("PASS " if ok else "FAIL ") + text)


if __name__ == "__main__":
    raise SystemExit(main())
