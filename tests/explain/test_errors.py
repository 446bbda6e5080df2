"""Every error path names its culprit."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from bias_audit.core.maps import explain, overlay
from bias_audit.errors import ConfigError, DataError, ModelError

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_targets_length(tiny_cnn):
    # pytorch-grad-cam silently returns zero maps here.
    with pytest.raises(ConfigError, match=r"targets: 1 targets for a batch of 2"):
        explain(tiny_cnn, X, targets=torch.tensor([0]))


def test_target_out_of_range(tiny_cnn):
    with pytest.raises(ConfigError, match=r"targets\[1\] = 3 is out of range for 3 classes"):
        explain(tiny_cnn, X, targets=torch.tensor([0, 3]))
    with pytest.raises(ConfigError, match=r"targets\[0\] = -1"):
        explain(tiny_cnn, X, targets=[-1, 0])


def test_targets_wrong_type(tiny_cnn):
    with pytest.raises(ConfigError, match="targets: expected integer"):
        explain(tiny_cnn, X, targets=torch.tensor([0.0, 1.0]))


def test_unknown_method(tiny_cnn):
    with pytest.raises(ConfigError, match=r"unknown method 'gradcam\+'.*gradcam\+\+"):
        explain(tiny_cnn, X, methods=("gradcam+",))


def test_layer_without_spatial_output(tiny_cnn):
    with pytest.raises(ConfigError, match=r"'fc'.*\(2, 3\)"):
        explain(tiny_cnn, X, target_layer="fc")


def test_unknown_layer_name_suggests(resnet18):
    with pytest.raises(ConfigError, match=r"'layer5'.*'layer4'"):
        explain(resnet18, torch.zeros(1, 3, 32, 32), target_layer="layer5")


def test_layer_not_part_of_model(tiny_cnn):
    with pytest.raises(ConfigError, match="Conv2d is not part of the model"):
        explain(tiny_cnn, X, target_layer=nn.Conv2d(3, 3, 1))


def test_layer_never_called(tiny_cnn):
    tiny_cnn.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(ModelError, match="'unused' was not called"):
        explain(tiny_cnn, X, target_layer="unused")


def test_cam_without_gap_linear_head():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 2))
    with pytest.raises(ModelError, match=r"'cam' needs a GAP \+ linear head.*'0'"):
        explain(model, X, methods=("cam",), target_layer="0")


def test_cam_with_callable_target(tiny_cnn):
    with pytest.raises(ConfigError, match="'cam' needs class-index targets"):
        explain(tiny_cnn, X, methods=("cam",), targets=lambda out: out[:, 0])


def test_callable_target_wrong_shape(tiny_cnn):
    with pytest.raises(ConfigError, match=r"targets: the callable must return.*\(2,\).*\(2, 3\)"):
        explain(tiny_cnn, X, targets=lambda out: out)


def test_non_classifier_output_needs_callable():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    with pytest.raises(ModelError, match=r"model output has shape \(2, 2, 6, 6\)"):
        explain(model, X, target_layer="0")


def test_model_type():
    with pytest.raises(ModelError, match="model: expected a torch.nn.Module, got function"):
        explain(lambda x: x, X)


def test_images_shape(tiny_cnn):
    with pytest.raises(DataError, match=r"images: .*\(3, 8, 8\)"):
        explain(tiny_cnn, X[0])


def test_scorecam_batch_size(tiny_cnn):
    with pytest.raises(ConfigError, match="scorecam_batch_size"):
        explain(tiny_cnn, X, methods=("scorecam",), scorecam_batch_size=0)


def test_scores_independent_of_layer(tiny_cnn):
    # A branch whose output the model discards.
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.side = nn.Conv2d(3, 2, 3)
            self.body = tiny_cnn

        def forward(self, x):
            self.side(x)
            return self.body(x)

    with pytest.raises(ModelError, match="'side': the scores do not depend on it"):
        explain(Branchy(), X, target_layer="side")


def test_overlay_errors():
    img = torch.rand(3, 8, 8)
    with pytest.raises(ConfigError, match="colormap: unknown 'hot'"):
        overlay(img, torch.rand(8, 8), colormap="hot")
    with pytest.raises(DataError, match=r"image: .*\(1, 8, 8\)"):
        overlay(torch.rand(1, 8, 8), torch.rand(8, 8))
    with pytest.raises(DataError, match=r"map: .*\(2, 8, 8\)"):
        overlay(Image.new("RGB", (8, 8)), torch.rand(2, 8, 8))
    with pytest.raises(ConfigError, match="alpha"):
        overlay(img, torch.rand(8, 8), alpha=1.5)
