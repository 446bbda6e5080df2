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


def make_images(
    n: int, *, seed: int, size: int = SIZE, watermark: bool = True, contrast: float = 0.4
) -> dict[str, torch.Tensor]:
    """images (N,3,S,S) normalised, labels (N,), masks (N,2,S,S) [object, watermark],
    present (N,2). Sizes other than 64 scale the object and the watermark with the image;
    ``watermark=False`` gives the clean task (the object alone decides), ``contrast`` the
    object's brightness over the noise."""
    rng = np.random.default_rng(seed)
    scale = size / SIZE
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    img = rng.normal(0.0, 0.5, size=(n, 3, size, size)).astype(np.float32)
    masks = np.zeros((n, 2, size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    for i, y in enumerate(labels):
        cy, cx = (rng.integers(18, 40, size=2) * scale).astype(int)
        r = round(9 * scale)
        if y == 1:
            obj = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            obj = (abs(yy - cy) <= r - 2) & (abs(xx - cx) <= r - 2)
        img[i, :, obj] += contrast
        masks[i, 0] = obj
        if y == 1 and watermark:
            side, gap = round(WM * scale), round(2 * scale)
            wm = np.zeros((size, size), bool)
            wm[size - side - gap : size - gap, size - side - gap : size - gap] = True
            cell = max(1, round(2 * scale))
            checker = ((yy // cell + xx // cell) % 2 == 0).astype(np.float32) * 4 - 2
            img[i][:, wm] = checker[wm][None]
            masks[i, 1] = wm
    present = np.stack([np.ones(n, bool), (labels == 1) & watermark], axis=1)
    return {
        "images": torch.from_numpy(img),
        "labels": torch.from_numpy(labels).long(),
        "masks": torch.from_numpy(masks),
        "present": torch.from_numpy(present),
    }


def train(
    model: nn.Module,
    data: dict[str, torch.Tensor],
    *,
    epochs: int,
    seed: int = 0,
    lr: float = 1e-3,
    batch: int = 32,
) -> nn.Module:
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
