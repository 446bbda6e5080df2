"""Maps against captum and pytorch-grad-cam (test-only oracles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from bias_audit.core.maps import explain
from bias_audit.core.maps._explain import _check_methods, _run


def _captum_gradcam(model, layer, images, targets):
    from captum.attr import LayerGradCam

    gc = LayerGradCam(model, layer).attribute(images, target=targets, relu_attributions=True)
    # captum does not upsample by itself; bilinear with align_corners=False is our contract.
    return F.interpolate(gc, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def _pgc_normalise(maps: torch.Tensor) -> np.ndarray:
    # pytorch-grad-cam's own per-image normalisation (utils.image.scale_cam_image)
    out = maps.numpy().astype(np.float32)
    out = out - out.min(axis=(1, 2), keepdims=True)
    return out / (1e-7 + out.max(axis=(1, 2), keepdims=True))


@pytest.mark.parametrize(
    ("arch", "layer"),
    [
        ("resnet18", "layer4"),
        ("vgg11", "features"),
        ("densenet121", "features"),  # followed by F.relu(inplace=True)
        ("densenet121", "features.denseblock4"),
        ("mobilenet_v3_small", "features"),
    ],
)
def test_gradcam_equals_captum(arch, layer):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=5).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 3])
    exp = explain(model, images, methods=("gradcam",), target_layer=layer, targets=targets)
    module = dict(model.named_modules())[layer]
    expected = _captum_gradcam(model, module, images, targets)
    assert exp.target_layer == layer
    assert expected.abs().max() > 0  # a map of zeros would make the comparison empty
    torch.testing.assert_close(exp.maps["gradcam"], expected, rtol=1e-4, atol=1e-6)


def test_auto_layer_is_the_last_spatial_output(resnet18, images64):
    exp = explain(resnet18, images64, methods=("gradcam",))
    assert exp.target_layer == "layer4"
    assert exp.layer_shape == (2, 2)


@pytest.mark.filterwarnings("ignore:.*(required_grads|backward hooks on ReLU).*:UserWarning")
def test_guided_backprop_and_guided_gradcam_equal_captum():
    from captum.attr import GuidedBackprop, GuidedGradCam

    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None, num_classes=5).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 4])
    exp = explain(
        model,
        images,
        methods=("guided_backprop", "guided_gradcam"),
        target_layer="features.18",
        targets=targets,
    )
    gbp = GuidedBackprop(model).attribute(images, target=targets)
    ggc = GuidedGradCam(model, model.features[18]).attribute(
        images, target=targets, interpolate_mode="bilinear"
    )
    assert gbp.abs().max() > 0 and ggc.abs().max() > 0
    torch.testing.assert_close(exp.maps["guided_backprop"], gbp, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(exp.maps["guided_gradcam"], ggc, rtol=1e-4, atol=1e-7)


@pytest.mark.filterwarnings("ignore:.*(required_grads|backward hooks on ReLU).*:UserWarning")
def test_guided_backprop_with_reused_inplace_relu(resnet18, images64):
    # torchvision ResNets reuse one nn.ReLU(inplace=True) per block.
    from captum.attr import GuidedBackprop

    targets = torch.tensor([2, 7])
    exp = explain(resnet18, images64, methods=("guided_backprop",), targets=targets)
    expected = GuidedBackprop(resnet18).attribute(images64.clone(), target=targets)
    torch.testing.assert_close(exp.maps["guided_backprop"], expected, rtol=1e-4, atol=1e-7)


def test_gradcam_is_the_same_with_a_guided_method(resnet18, images64):
    plain = explain(resnet18, images64, methods=("gradcam", "hirescam"), target_layer="layer4")
    mixed = explain(
        resnet18,
        images64,
        methods=("gradcam", "hirescam", "guided_backprop", "deconvnet"),
        target_layer="layer4",
    )
    torch.testing.assert_close(mixed.maps["gradcam"], plain.maps["gradcam"], rtol=0, atol=0)
    torch.testing.assert_close(mixed.maps["hirescam"], plain.maps["hirescam"], rtol=0, atol=0)
    torch.testing.assert_close(mixed.logits, plain.logits, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"])
def test_variants_equal_pytorch_grad_cam_at_layer_resolution(resnet18, images64, method):
    # pytorch-grad-cam resizes with OpenCV; we resize with F.interpolate. An honest comparison is
    # at the layer's own resolution, after the same per-image normalisation.
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "xgradcam": XGradCAM,
        "layercam": LayerCAM,
        "hirescam": HiResCAM,
    }[method]
    classes = [4, 9]
    # pytorch-grad-cam adds eps = 1e-6 to the Grad-CAM++ denominator, as large as g^2 for
    # these random weights. Explaining 1000 x the logit (same score for both) makes it moot.
    scale = 1000.0 if method == "gradcam++" else 1.0
    idx = torch.tensor(classes)
    raw = _run(
        resnet18,
        images64,
        _check_methods((method,)),
        target_layer="layer3",
        targets=lambda out: scale * out.gather(1, idx[:, None])[:, 0],
        reshape=None,
        scorecam_batch_size=32,
    )
    assert raw.layer_shape == (4, 4)
    cam = cls(model=resnet18, target_layers=[resnet18.layer3])
    cam.get_target_width_height = lambda _x: None  # keep the layer resolution
    if scale == 1.0:
        pgc_targets = [ClassifierOutputTarget(c) for c in classes]
    else:
        pgc_targets = [lambda o, c=c: scale * o[c] for c in classes]
    expected = cam(images64.clone(), targets=pgc_targets)
    resnet18.zero_grad(set_to_none=True)  # pytorch-grad-cam fills .grad; leave none behind
    np.testing.assert_allclose(_pgc_normalise(raw.layer_maps[method]), expected, atol=2e-5)


def test_scorecam_equals_pytorch_grad_cam(tiny_cnn):
    # Full-resolution features: neither library resizes anything, so the masks are identical.
    # pytorch-grad-cam softmaxes its scores over channels, the paper over classes; its target
    # log p_c turns the former into p_c / sum_k p_c, which per-image normalisation removes.
    from pytorch_grad_cam import ScoreCAM

    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 2])
    exp = explain(
        tiny_cnn,
        images,
        methods=("scorecam",),
        target_layer="relu2",
        targets=targets,
        scorecam_batch_size=4,
    )
    cam = ScoreCAM(model=tiny_cnn, target_layers=[tiny_cnn.relu2])
    expected = cam(
        images.clone(),
        targets=[lambda o, c=int(c): torch.log_softmax(o, dim=-1)[c] for c in targets],
    )
    assert exp.layer_shape == (8, 8)
    np.testing.assert_allclose(_pgc_normalise(exp.maps["scorecam"]), expected, atol=2e-5)


def test_cam_is_gradcam_times_z(resnet18, images64):
    exp = explain(resnet18, images64, methods=("cam", "gradcam"), target_layer="layer4")
    z = exp.layer_shape[0] * exp.layer_shape[1]
    assert exp.maps["cam"].max() > 0
    torch.testing.assert_close(exp.maps["cam"], exp.maps["gradcam"] * z, rtol=1e-4, atol=1e-6)
