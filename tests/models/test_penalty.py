import dataclasses

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

from bias_audit.core.architectures import SmallCNN, build_model
from bias_audit.core.maps import explain, resolve_target_layer
from bias_audit.core.maps._explain import _run
from bias_audit.core.training._penalty import (
    _coverage,
    gradcam_evidence_mass,
    gradcam_mass,
    input_grad_energy,
)
from bias_audit.core.training._strategies import (
    STRATEGIES,
    Step,
    cell_loss_weights,
    cell_sampling_weights,
    initial_state,
)
from bias_audit.errors import ConfigError, ModelError
from bias_audit.pipelines import TrainConfig


@pytest.fixture
def tiny(gen):
    torch.manual_seed(0)
    model = SmallCNN(3, width=4).eval()
    images = torch.randn(4, 3, 32, 32, generator=gen)
    region = torch.zeros(4, 32, 32, dtype=torch.bool)
    region[:, :12, :20] = True
    region[3] = False
    return model, images, region


def test_gradcam_mass_matches_captum(tiny):
    model, images, region = tiny
    labels = torch.tensor([0, 2, 1, 2])
    logits, mass = gradcam_mass(model, images, labels, region, target_layer="features")
    # Oracle: captum's unrectified Grad-CAM per class; Grad-CAM is linear in the score, so the
    # margin's map is G_label - mean_c G_c, rectified afterwards.
    lgc = LayerGradCam(model, model.features)
    per_class = torch.stack(
        [
            lgc.attribute(images, target=torch.full((4,), c), relu_attributions=False)[:, 0]
            for c in range(3)
        ],
        dim=1,
    ).detach()  # (N,C,4,4)
    cam = F.relu(per_class[torch.arange(4), labels] - per_class.mean(1))
    cover = region.float().reshape(4, 4, 8, 4, 8).mean((2, 4))  # hand-made area pooling
    expected = (cam * cover).sum((1, 2)) / cam.sum((1, 2))
    torch.testing.assert_close(mass.detach(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits.detach(), model(images).detach())
    assert mass[3] == 0  # empty region


def test_gradcam_evidence_mass_matches_captum(tiny):
    model, images, region = tiny
    logits, mass = gradcam_evidence_mass(model, images, region, target_layer="features")
    lgc = LayerGradCam(model, model.features)
    per_class = torch.stack(
        [
            lgc.attribute(images, target=torch.full((4,), c), relu_attributions=False)[:, 0]
            for c in range(3)
        ],
        dim=1,
    ).detach()  # (N,C,4,4)
    # Each class's margin map G_c - mean_j G_j, unrectified, then its absolute value.
    cam = (per_class - per_class.mean(1, keepdim=True)).abs()
    cover = region.float().reshape(4, 4, 8, 4, 8).mean((2, 4))[:, None]
    expected = ((cam * cover).sum((2, 3)) / cam.sum((2, 3))).mean(1)
    torch.testing.assert_close(mass.detach(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits.detach(), model(images).detach())
    assert mass[3] == 0 and (mass[:3] > 0).all()
    # A different quantity from the ReLU'd label map: the oracle above is not trivially met.
    _, label_mass = gradcam_mass(
        model, images, torch.zeros(4, dtype=torch.long), region, target_layer="features"
    )
    assert not torch.allclose(label_mass.detach(), mass.detach())


def test_coverage_window_by_hand():
    region = torch.zeros(1, 16, 16, dtype=torch.bool)
    region[0, :4, :4] = True  # exactly the top-left cell of a 4x4 layer
    region[0, 12:, 14:] = True  # half of the bottom-right cell
    own = _coverage(region, (4, 4), 1)
    expected = torch.zeros(1, 4, 4)
    expected[0, 0, 0], expected[0, 3, 3] = 1.0, 0.5
    torch.testing.assert_close(own, expected)
    # 3x3 neighbourhoods, zero outside the layer: each neighbour of a cell gets its share / 9
    wide = _coverage(region, (4, 4), 3)
    expected = torch.zeros(1, 4, 4)
    expected[0, :2, :2] = 1 / 9
    expected[0, 2:, 2:] = 0.5 / 9
    torch.testing.assert_close(wide, expected)
    for bad in (0, 2, True):
        with pytest.raises(ConfigError, match="penalty_window"):
            _coverage(region, (4, 4), bad)


def test_window_changes_the_penalised_cells(tiny):
    model, images, region = tiny
    lgc = LayerGradCam(model, model.features)
    g = torch.stack(
        [
            lgc.attribute(images, target=torch.full((4,), c), relu_attributions=False)[:, 0]
            for c in range(3)
        ],
        dim=1,
    ).detach()
    cam = (g - g.mean(1, keepdim=True)).abs()
    cover = region.float().reshape(4, 4, 8, 4, 8).mean((2, 4))
    cover = F.pad(cover, (1, 1, 1, 1)).unfold(1, 3, 1).unfold(2, 3, 1).mean((3, 4))[:, None]
    expected = ((cam * cover).sum((2, 3)) / cam.sum((2, 3))).mean(1)
    _, mass = gradcam_evidence_mass(model, images, region, target_layer="features", window=3)
    torch.testing.assert_close(mass.detach(), expected, rtol=1e-4, atol=1e-6)


def test_gradcam_evidence_mass_is_differentiable(tiny):
    model, images, region = tiny
    model.train()
    _, mass = gradcam_evidence_mass(model, images, region, target_layer="features")
    grads = torch.autograd.grad(mass.sum(), [model.fc.weight, model.features[0].weight])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert not model.features._forward_hooks


def test_gradcam_mass_is_differentiable_wrt_parameters(tiny):
    model, images, region = tiny
    model.train()
    _, mass = gradcam_mass(
        model, images, torch.tensor([0, 1, 2, 0]), region, target_layer="features"
    )
    grads = torch.autograd.grad(mass.sum(), [model.fc.weight, model.features[0].weight])
    # fc.weight only reaches the map through the gradient dS/dA: this needs create_graph.
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    # the forward hook is gone
    assert not model.features._forward_hooks


def test_input_grad_energy_matches_linear_closed_form(gen):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    x = torch.randn(2, 3, 4, 4, generator=gen)
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[0, :2] = True
    region[1, :, 3] = True
    _, energy = input_grad_energy(model, x, region)
    # For logits Wx+b: d/dx sum_k log p_k = sum_k W_k - C * sum_j p_j W_j.
    w = model[1].weight.detach()
    p = F.softmax(model(x), 1).detach()
    grad = (w.sum(0)[None] - 3 * p @ w).reshape(2, 3, 4, 4)
    expected = ((region[:, None] * grad) ** 2).sum((1, 2, 3))
    torch.testing.assert_close(energy.detach(), expected)


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("smallcnn_w4", "features"),
        ("resnet18", "layer4"),
        # The old training probe took the adaptive pool (7x7 whatever the input) for these two.
        ("vgg11", "features"),
        ("alexnet", "features.11"),  # at 64 px `features` ends 1x1: the last ReLU is 3x3
    ],
)
def test_training_and_explain_resolve_the_same_layer(arch, expected, gen):
    x = torch.randn(2, 3, 64, 64, generator=gen)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=2).train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    # The trainer resolves on a fresh model in training mode.
    name, module, reshape = resolve_target_layer(model, None, x[:1], None)
    assert name == expected and module is model.get_submodule(expected) and reshape is None
    assert all(m.training for m in model.modules())
    # the probe ran in eval mode: BatchNorm statistics did not move
    for k, v in model.state_dict().items():
        if k in stats:
            assert torch.equal(v, stats[k]), k
    # explain on an equal model that has never been resolved (no shared cache)
    torch.manual_seed(0)
    fresh = build_model(arch, num_classes=2)
    assert explain(fresh, x).target_layer == expected


def test_resolver_refuses_a_model_without_spatial_layers():
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ModelError, match="target_layer"):
        resolve_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), None, x, None)


def test_penalty_map_is_explains_gradcam(tiny):
    """The label penalty's map is explain's Grad-CAM of the label margin at the same layer.

    explain's score must be the penalty's: a callable target giving the label's margin over
    the mean logit. Then explain's gradcam (upsampled) and the penalty's mass agree.
    """
    model, images, region = tiny
    labels = torch.tensor([0, 2, 1, 2])

    def margin(out):
        return out.gather(1, labels[:, None])[:, 0] - out.mean(dim=1)

    raw = explain_raw(model, images, labels, margin)
    assert raw.target_layer == "features" and raw.layer_shape == (4, 4)
    cam = raw.layer_maps["gradcam"]  # (N, 4, 4): the penalty works at the layer's resolution
    cover = region.float().reshape(4, 4, 8, 4, 8).mean((2, 4))
    expected = (cam * cover).sum((1, 2)) / (cam.sum((1, 2)) + 1e-8)
    _, mass = gradcam_mass(model, images, labels, region, target_layer="features")
    torch.testing.assert_close(mass.detach(), expected, rtol=1e-5, atol=1e-7)


def test_penalty_gradcam_equals_explain_on_resnet(gen):
    """The same on a torchvision model, with the layer explain picks by itself."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3).eval()
    images = torch.randn(2, 3, 64, 64, generator=gen)
    labels = torch.tensor([1, 2])
    region = torch.zeros(2, 64, 64, dtype=torch.bool)
    region[:, :32] = True

    def margin(out):
        return out.gather(1, labels[:, None])[:, 0] - out.mean(dim=1)

    raw = explain_raw(model, images, labels, margin)
    assert raw.target_layer == "layer4"
    cam = raw.layer_maps["gradcam"]  # (2, 2, 2)
    assert (cam.sum((1, 2)) > 0).all()
    cover = region.float().reshape(2, 2, 32, 2, 32).mean((2, 4))
    expected = (cam * cover).sum((1, 2)) / (cam.sum((1, 2)) + 1e-8)
    _, mass = gradcam_mass(model, images, labels, region, target_layer=raw.target_layer)
    torch.testing.assert_close(mass.detach(), expected, rtol=1e-4, atol=1e-6)


def explain_raw(model, images, labels, score):
    return _run(model, images, ("gradcam",), target_layer=None, targets=score, reshape=None,
                scorecam_batch_size=1)  # fmt: skip


def test_cell_weights_by_hand():
    cells = torch.tensor([0, 0, 0, 1, 2, 2])
    sw = cell_sampling_weights(cells, 3)
    torch.testing.assert_close(
        sw, torch.tensor([1 / 3] * 3 + [1.0] + [0.5] * 2, dtype=torch.float64)
    )
    # every cell drawn equally often in expectation: each cell's total weight is 1
    assert [sw[cells == c].sum().item() for c in range(3)] == pytest.approx([1, 1, 1])
    lw = cell_loss_weights(cells, 3)
    # 1/n per cell = (1/3, 1, 1/2), scaled so the mean over the 6 samples is 1: factor 6/3 = 2
    torch.testing.assert_close(lw, torch.tensor([2 / 3, 2.0, 1.0]))


def _step(model, images, labels, cells, state, **cfg):
    config = TrainConfig(train_manifest="m.csv", **cfg)
    n = len(labels)
    return Step(
        model=model,
        images=images,
        labels=labels,
        cells=cells,
        n_cells=3,
        confounder=torch.zeros(n, 32, 32, dtype=torch.bool),
        state=state,
        config=config,
        target_layer="features",
    )


def test_group_dro_update_by_hand(tiny):
    model, images, _ = tiny
    labels, cells = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 1])
    state = initial_state("group_dro", torch.tensor([0, 1, 2]), 3)
    loss, logits = STRATEGIES["group_dro"](_step(model, images, labels, cells, state, dro_eta=0.5))
    ce = F.cross_entropy(logits.detach(), labels, reduction="none")
    g = torch.stack([ce[:2].mean(), ce[2:].mean(), torch.tensor(0.0)])
    q = torch.full((3,), 1 / 3) * torch.exp(0.5 * g)
    q = q / q.sum()
    torch.testing.assert_close(state["q"], q)
    torch.testing.assert_close(loss.detach(), (q * g).sum())


def test_reweight_loss_by_hand(tiny):
    model, images, _ = tiny
    labels, cells = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2])
    state = {"cell_weights": torch.tensor([0.5, 2.0, 1.0])}
    loss, logits = STRATEGIES["reweight"](_step(model, images, labels, cells, state))
    ce = F.cross_entropy(logits.detach(), labels, reduction="none")
    torch.testing.assert_close(loss.detach(), (ce * torch.tensor([0.5, 0.5, 2.0, 1.0])).mean())


def test_mask_confounders_loss_by_hand(tiny):
    model, images, region = tiny
    model.train()
    labels = torch.tensor([0, 1, 2, 0])
    step = _step(
        model,
        images,
        labels,
        torch.zeros(4, dtype=torch.long),
        {},
        strategy="mask_confounders",
        confounders=("spot",),
    )
    step = dataclasses.replace(step, confounder=region)
    torch.manual_seed(0)
    loss, logits = STRATEGIES["mask_confounders"](step)
    masked = images.clone()
    masked[:, :, :12, :20] = 0  # image 3 has no region and stays whole
    masked[3] = images[3]
    torch.testing.assert_close(logits.detach(), model(masked).detach())
    torch.testing.assert_close(loss.detach(), F.cross_entropy(model(masked), labels).detach())
