import pytest
import torch
from torch import nn

from bias_audit.core.maps import fast_layout
from bias_audit.core.metrics import occlusion_effect, random_patches
from bias_audit.errors import ConfigError, DataError, ModelError


class SpotModel(nn.Module):
    """logit 1 = brightest pixel of channel 0, logit 0 = 0.5: a bright spot makes class 1."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
            self.head.bias.copy_(torch.tensor([0.5, 0.0]))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.head(self.pool(x).flatten(1))


def _spots(gen, n=12, size=32, side=4):
    images = torch.rand(n, 3, size, size, generator=gen) * 0.2
    masks = torch.zeros(n, 2, size, size, dtype=torch.bool)
    pos = torch.randint(0, size - side, (n, 2), generator=gen)
    for i, (y, x) in enumerate(pos.tolist()):
        images[i, 0, y : y + side, x : x + side] = 1.0
        masks[i, 0, y : y + side, x : x + side] = True
    masks[:, 1, :2, :2] = True  # a corner the model ignores (unless a spot sits there)
    masks[min(3, n - 1), 1] = False  # an empty mask
    return images, masks


def test_occluding_the_driver_flips_and_random_patch_does_not(gen):
    images, masks = _spots(gen)
    model = SpotModel()
    targets = torch.ones(12, dtype=torch.long)
    occ = occlusion_effect(model, images, masks, targets, fill="mean", seed=3)
    assert occ.flip[:, 0].tolist() == [1.0] * 12
    # the logit drops from 1 to the image's own channel-0 mean after the spot is hidden
    clean = model(images)
    for i in range(12):
        x = images[i].clone()
        x[:, masks[i, 0]] = images[i].mean(dim=(1, 2))[:, None]
        expect = clean[i, 1] - model(x[None])[0, 1]
        assert occ.drop_logit[i, 0].item() == pytest.approx(expect.item(), abs=1e-5)
    assert (occ.drop_prob[:, 0] > 0.15).all()  # softmax(0.5, 1) -> softmax(0.5, ~0.1)
    # the baseline: a 16-pixel patch flips only where it hides the whole spot
    patches = random_patches(masks, seed=3)
    covers = (patches[:, 0] | ~masks[:, 0]).flatten(1).all(dim=1).float()
    assert occ.flip_random[:, 0].tolist() == covers.tolist()
    assert occ.flip_random[:, 0].mean() <= 0.25
    # the corner mask does not drive the model unless a spot touches it
    touches = (masks[:, 1] & masks[:, 0]).flatten(1).any(dim=1)
    assert occ.flip[~touches, 1].nan_to_num(0).sum() == 0
    # empty mask: NaN everywhere for it
    for field in ("drop_logit", "drop_prob", "flip", "drop_logit_random", "flip_random"):
        assert torch.isnan(getattr(occ, field)[3, 1]), field
        assert not torch.isnan(getattr(occ, field)[[0, 1, 2, 4], 1]).any(), field


def test_blur_fill_hides_a_small_spot(gen):
    images, masks = _spots(gen, n=4, size=64, side=3)
    model = SpotModel()
    occ = occlusion_effect(model, images, masks, torch.ones(4, dtype=torch.long), baseline=False)
    assert (occ.drop_logit[:, 0] > 0.3).all()
    assert torch.isnan(occ.flip_random).all()


def test_random_patches_have_the_mask_area(gen):
    masks = torch.rand(5, 3, 20, 17, generator=gen) < torch.tensor([0.05, 0.3, 0.9]).view(
        1, 3, 1, 1
    )
    masks[0, 0] = False
    patches = random_patches(masks, seed=0)
    assert torch.equal(patches.flatten(2).sum(2), masks.flatten(2).sum(2))
    assert torch.equal(patches, random_patches(masks, seed=0))
    assert not torch.equal(patches, random_patches(masks, seed=1))
    # a patch is one rectangle: its bounding box holds at most one partial column extra
    for i in range(5):
        for j in range(3):
            p = patches[i, j]
            if not p.any():
                continue
            ys, xs = torch.nonzero(p, as_tuple=True)
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            assert box - p.sum() < ys.max() - ys.min() + 1


def test_given_logits_are_not_recomputed_and_mode_is_restored(gen):
    images, masks = _spots(gen, n=4)
    model = SpotModel().train()
    logits = model(images).detach()
    fast_layout(model, images)  # the one-image layout probe, once per model and input shape
    model.calls = 0
    occ = occlusion_effect(model, images, masks, torch.ones(4, dtype=torch.long), logits=logits)
    assert model.calls == 4  # 2 masks + 2 baselines, no clean pass
    assert model.training
    occ.flip.add_(0)  # ordinary tensors, not inference tensors
    model.calls = 0
    occlusion_effect(model, images, masks, torch.ones(4, dtype=torch.long), baseline=False)
    assert model.calls == 3


def test_mode_restored_on_error(gen):
    images, masks = _spots(gen, n=2)
    model = SpotModel().train()
    with pytest.raises(DataError, match="targets"):
        occlusion_effect(model, images, masks, torch.tensor([0, 7]))
    assert model.training


def test_bad_arguments(gen):
    images, masks = _spots(gen, n=2)
    model = SpotModel()
    t = torch.ones(2, dtype=torch.long)
    with pytest.raises(ConfigError, match="fill"):
        occlusion_effect(model, images, masks, t, fill="noise")
    with pytest.raises(DataError, match="images"):
        occlusion_effect(model, images[0], masks, t)
    with pytest.raises(DataError, match="masks"):
        occlusion_effect(model, images, masks.float(), t)
    with pytest.raises(DataError, match="masks"):
        occlusion_effect(model, images, masks[:, :, :8], t)
    with pytest.raises(DataError, match="targets"):
        occlusion_effect(model, images, masks, torch.ones(3, dtype=torch.long))
    with pytest.raises(ModelError, match="logits"):
        occlusion_effect(model, images, masks, t, logits=torch.zeros(3, 2))


def test_fills_are_what_the_docs_say(gen):
    import math

    import torch.nn.functional as F

    from bias_audit.core.metrics._interventions import _fill_image

    x = torch.rand(2, 3, 40, 48, generator=gen)
    mean = _fill_image(x, "mean")
    torch.testing.assert_close(mean[:, :, 7, 9], x.mean(dim=(2, 3)))
    # blur: a Gaussian with sigma = 5% of the shorter side, +-2 sigma, reflect padding
    sigma = 0.05 * 40
    half = math.ceil(2 * sigma)
    t = torch.arange(-half, half + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    padded = F.pad(x, (half, half, half, half), mode="reflect")
    rows = F.conv2d(padded.reshape(-1, 1, *padded.shape[-2:]), k.view(1, 1, 1, -1))
    both = F.conv2d(rows, k.view(1, 1, -1, 1)).reshape_as(x)
    torch.testing.assert_close(_fill_image(x, "blur"), both, atol=1e-5, rtol=1e-5)
