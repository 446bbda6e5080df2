"""Spearman and SSIM of maps against scipy and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from bias_audit.core.trust import spearman, ssim
from bias_audit.errors import DataError


def _maps(gen: torch.Generator, n: int = 4, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.rand(n, side, side, generator=gen)
    # b: a smoothed, noisier copy, so the similarities are neither 0 nor 1
    b = torch.nn.functional.avg_pool2d(a[:, None], 3, 1, 1)[:, 0] + 0.3 * torch.rand(
        n, side, side, generator=gen
    )
    return a, b


def test_spearman_matches_scipy_with_ties(gen):
    a, b = _maps(gen)
    a = (a * 5).floor()  # many ties
    ours = spearman(a, b)
    for i in range(len(a)):
        ref = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert ours[i].item() == pytest.approx(ref, abs=1e-12)


def test_spearman_of_a_constant_map_is_nan(gen):
    a, b = _maps(gen, n=2)
    a[1] = 0.0
    r = spearman(a, b)
    assert np.isfinite(r[0].item()) and np.isnan(r[1].item())


def test_ssim_matches_skimage(gen):
    a, b = _maps(gen, side=40)
    ours = ssim(a, b)
    for i in range(len(a)):
        # our ssim scales each map to [0, 1] first
        x, y = (t[i].double().numpy() for t in (a, b))
        x = (x - x.min()) / (x.max() - x.min())
        y = (y - y.min()) / (y.max() - y.min())
        ref = structural_similarity(
            x, y, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)
    assert ssim(a, a).numpy() == pytest.approx(1.0, abs=1e-6)


def test_ssim_refuses_maps_smaller_than_its_window(gen):
    a = torch.rand(2, 8, 8, generator=gen)
    with pytest.raises(DataError, match="smaller than the window"):
        ssim(a, a)
