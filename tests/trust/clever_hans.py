"""A Clever-Hans case made in seconds: a small watermark decides the class.

Every image holds an object (the causal region: a low-contrast disc for class 1, a square for
class 0) on noise; class-1 images also carry a 10 x 10 checkerboard watermark in a corner
(2.4% of a 64 px image, the confounder). A model trained on them learns the watermark.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SIZE = 64
WM = 10  # watermark side


def make_images(n: int, *, seed: int) -> dict[str, torch.Tensor]:
    """images (N,3,S,S) normalised, labels (N,), masks (N,2,S,S) [causal, watermark],
    present (N,2)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    img = rng.normal(0.0, 0.5, size=(n, 3, SIZE, SIZE)).astype(np.float32)
    masks = np.zeros((n, 2, SIZE, SIZE), bool)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i, y in enumerate(labels):
        cy, cx = rng.integers(18, 40, size=2)
        r = 9
        if y == 1:
            obj = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            obj = (abs(yy - cy) <= r - 2) & (abs(xx - cx) <= r - 2)
        img[i, :, obj] += 0.4
        masks[i, 0] = obj
        if y == 1:
            wm = np.zeros((SIZE, SIZE), bool)
            wm[SIZE - WM - 2 : SIZE - 2, SIZE - WM - 2 : SIZE - 2] = True
            checker = ((yy // 2 + xx // 2) % 2 == 0).astype(np.float32) * 4 - 2
            img[i][:, wm] = checker[wm][None]
            masks[i, 1] = wm
    present = np.stack([np.ones(n, bool), labels == 1], axis=1)
    return {
        "images": torch.from_numpy(img),
        "labels": torch.from_numpy(labels).long(),
        "masks": torch.from_numpy(masks),
        "present": torch.from_numpy(present),
    }


def train(model: nn.Module, data: dict[str, torch.Tensor], *, epochs: int, seed: int = 0,
          lr: float = 1e-3, batch: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = data["images"], data["labels"]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for s in range(0, len(x), batch):
            idx = order[s : s + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model
