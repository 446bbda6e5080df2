import pytest
import torch

from bias_audit.core.metrics import sample_metrics
from bias_audit.core.metrics._localization import _count

REGIONS = ("hair", "coat", "face")
ROLES = {"causal": ["coat"], "confounder": ["hair", "face"]}


def _batch(gen, n=6, h=16, w=12):
    maps = (torch.rand(n, h, w, generator=gen) - 0.4).clamp_min(0)
    maps[0] = 0.0
    masks = torch.rand(n, 3, h, w, generator=gen) < 0.3
    present = torch.rand(n, 3, generator=gen) > 0.2
    return maps, masks, present


@pytest.mark.parametrize("width", [8, 16, 2040, 7, 13])
def test_count_matches_a_plain_sum(gen, width):
    region = torch.rand(5, width, generator=gen) < 0.5
    region[0] = True
    assert _count(region).tolist() == region.sum(dim=1).tolist()


def test_float64_and_float32_maps_agree(gen):
    maps, masks, present = _batch(gen)
    single = sample_metrics(maps, masks, present, REGIONS, ROLES, tolerance=2.0)
    double = sample_metrics(maps.double(), masks, present, REGIONS, ROLES, tolerance=2.0)
    assert list(single) == list(double)
    for key in single:
        assert double[key].dtype == torch.float32 and double[key].shape == (6,)
        torch.testing.assert_close(single[key], double[key], equal_nan=True, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_results_stay_on_cuda_and_match_cpu(gen):
    maps, masks, present = _batch(gen)
    cpu = sample_metrics(maps, masks, present, REGIONS, ROLES, tolerance=2.0)
    gpu = sample_metrics(maps.cuda(), masks.cuda(), present.cuda(), REGIONS, ROLES, tolerance=2.0)
    for key in cpu:
        assert gpu[key].device.type == "cuda"
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], equal_nan=True, msg=key)
