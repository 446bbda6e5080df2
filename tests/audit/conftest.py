"""A tiny audit world: generated portraits with region masks, and tiny saved models."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bias_audit.io.checkpoints import CheckpointMeta, save_checkpoint
from tests.audit.nets import TinyNet

SIZE = 24
N = 40  # 10 per (gender, label) cell
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _world(root: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        gender = ("female", "male")[i % 2]
        label = ("doctor", "nurse")[(i // 2) % 2]
        img = rng.integers(0, 80, size=(SIZE, SIZE, 3), dtype=np.uint8)
        # hair: a bright band on top whose colour follows gender (the confounder)
        hair = np.zeros((SIZE, SIZE), bool)
        hair[:5, 4:20] = True
        img[hair] = (220, 180, 40) if gender == "female" else (60, 40, 20)
        face = np.zeros((SIZE, SIZE), bool)
        face[5:12, 7:17] = True
        img[face] = (200, 160, 140)
        # coat: a box at the bottom whose shade follows the label (the causal region)
        img[14:24, 3:21] = (240, 240, 240) if label == "doctor" else (90, 140, 220)
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "img" / f"{i:03d}.png")
        Image.fromarray(hair.astype(np.uint8) * 255).save(root / "masks" / f"{i:03d}_hair.png")
        Image.fromarray(face.astype(np.uint8) * 255).save(root / "masks" / f"{i:03d}_face.png")
        rows.append({
            "id": f"s{i:03d}", "image": f"img/{i:03d}.png", "label": label, "gender": gender,
            "mask:hair": f"masks/{i:03d}_hair.png",
            # one image without a face annotation: its face metrics must be NaN, not zero
            "mask:face": f"masks/{i:03d}_face.png" if i != 7 else "",
            "bbox:coat": "3 14 21 24",
        })  # fmt: skip
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _save_models(root: Path) -> dict[str, Path]:
    out = {}
    for seed, name in ((0, "biased"), (1, "debiased")):
        torch.manual_seed(seed)
        net = TinyNet(2)
        meta = CheckpointMeta(
            arch="tests.audit.nets:build", classes=("doctor", "nurse"), image_size=SIZE,
            mean=MEAN, std=STD,
        )  # fmt: skip
        out[name] = save_checkpoint(root / f"{name}.pt", net.state_dict(), meta)
    # a plain state_dict: arch and classes must come from the config
    torch.manual_seed(2)
    plain = root / "plain.pt"
    torch.save(TinyNet(2).state_dict(), plain)
    out["plain"] = plain
    return out


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    manifest = _world(root)
    return {"root": root, "manifest": manifest, **_save_models(root)}


CONFIG = """title = "tiny"
[data]
manifest = "manifest.csv"
groups = ["gender"]
image_size = {size}
batch_size = 8
[regions]
causal = ["coat"]
confounder = ["face", "hair"]
[explain]
methods = ["gradcam", "gradcam++"]
[stats]
min_group_size = 5
bootstrap = 50
permutations = 50
[report]
enabled = false
gallery_per_cell = 2
[[models]]
name = "biased"
checkpoint = "biased.pt"
arch = "tests.audit.nets:build"
[[models]]
name = "debiased"
checkpoint = "debiased.pt"
arch = "tests.audit.nets:build"
"""


def write_config(
    world: dict[str, Path],
    name: str = "audit.toml",
    extra: str = "",
    replace: tuple[str, str] | None = None,
) -> Path:
    text = CONFIG.format(size=SIZE) + extra
    if replace:
        text = text.replace(*replace)
    path = world["root"] / name
    path.write_text(text)
    return path


def part_files(out: Path, model: str = "slow") -> list[Path]:
    """The part files a run has written for ``model`` so far."""
    return sorted((out / "progress" / model).glob("part-*.parquet"))


def kill_after_parts(args: list[str], out: Path, env: dict[str, str], *, at: int = 3,
                     timeout: float = 120) -> None:  # fmt: skip
    """Run ``bias-audit ARGS`` and SIGKILL it once it has written ``at`` parts."""
    proc = subprocess.Popen([sys.executable, "-m", "bias_audit", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while len(part_files(out)) < at:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, f"the run never wrote {at} batches"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
