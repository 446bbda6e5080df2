"""Hand-computed maps on a model with set weights (tests/explain/conftest.py: HandSet)."""

from __future__ import annotations

import pytest
import torch

from bias_audit.core.maps import explain
from bias_audit.errors import ModelError

# x = [[1, -2], [3, 4]] -> A0 = x, A1 = -x at the conv; relu(A0) = [[1,0],[3,4]], relu(A1) =
# [[0,2],[0,0]]. Class 0 (W = [1, 2]): dS/dA0 = 1/4 where x > 0, dS/dA1 = 2/4 where x < 0.
X = torch.tensor([[1.0, -2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
x = X[0, 0]
CLASS0 = torch.tensor([0])

EXPECTED_CONV = {
    # alpha0 = 1/4 * 3/4 = 3/16, alpha1 = 2/4 * 1/4 = 1/8: relu(3/16 x - 1/8 x) = relu(x / 16)
    "gradcam": (x / 16).clamp(min=0),
    "counterfactual": (-x / 16).clamp(min=0),
    # sum_k g_k * A_k: [[1/4, 0], [3/4, 1]] + [[0, 1/2 * 2], [0, 0]]
    "hirescam": torch.tensor([[0.25, 1.0], [0.75, 1.0]]),
    "layercam": torch.tensor([[0.25, 1.0], [0.75, 1.0]]),
    # channel 0: a = (1/16) / (2/16 + 6 * 1/64) = 2/7 at three positions, w0 = 3 * 2/7 * 1/4;
    # channel 1: a = (1/4) / (2/4 - 6 * 1/8) = -1, w1 = -1/2 -> relu((3/14 + 1/2) x) = 5/7 x
    "gradcam++": (5 / 7 * x).clamp(min=0),
    # w0 = (1/6)(1/4)(1 + 3 + 4) = 1/3, w1 = (2 / -6)(1/2) = -1/6 -> relu(x/3 + x/6) = x / 2
    "xgradcam": (x / 2).clamp(min=0),
}


@pytest.mark.parametrize("method", sorted(EXPECTED_CONV))
def test_hand_computed_at_conv(handset, method):
    exp = explain(handset, X, methods=(method,), target_layer="conv", targets=CLASS0)
    assert exp.layer_shape == (2, 2)
    torch.testing.assert_close(exp.maps[method][0], EXPECTED_CONV[method], rtol=1e-6, atol=1e-7)


def test_cam_and_gradcam_at_relu(handset):
    # At the relu, the head is GAP + linear: CAM = relu(1 * [[1,0],[3,4]] + 2 * [[0,2],[0,0]]).
    exp = explain(handset, X, methods=("cam", "gradcam"), target_layer="relu", targets=CLASS0)
    cam = torch.tensor([[1.0, 4.0], [3.0, 4.0]])
    torch.testing.assert_close(exp.maps["cam"][0], cam)
    torch.testing.assert_close(exp.maps["gradcam"][0] * 4, cam)  # Grad-CAM = CAM / Z, Z = 4


def test_cam_refuses_a_layer_before_a_relu(handset):
    # The head pools relu(conv), not conv: CAM at the conv is not defined.
    with pytest.raises(ModelError, match="'conv'"):
        explain(handset, X, methods=("cam",), target_layer="conv", targets=CLASS0)


def test_guided_rules_hand_computed(handset):
    # Class 1, W = [0.5, -1]: the gradient reaching the relu is 1/8 on channel 0, -1/4 on 1.
    exp = explain(
        handset,
        X,
        methods=("guided_backprop", "deconvnet"),
        target_layer="conv",
        targets=torch.tensor([1]),
    )
    # guided: only positive gradient, only where the input was positive -> channel 1 drops out
    guided = torch.tensor([[1 / 8, 0.0], [1 / 8, 1 / 8]])
    # deconvnet: relu(1/8) * 1 + relu(-1/4) * (-1) everywhere, whatever the sign of the input
    deconv = torch.full((2, 2), 1 / 8)
    torch.testing.assert_close(exp.maps["guided_backprop"][0, 0], guided)
    torch.testing.assert_close(exp.maps["deconvnet"][0, 0], deconv)


def test_logits_and_predicted_target(handset):
    exp = explain(handset, X, methods=("gradcam",), target_layer="conv")
    # GAP(relu) = [2, 0.5]: logits = [2 + 1 + 0.3, 1 - 0.5 - 0.2]
    torch.testing.assert_close(exp.logits, torch.tensor([[3.3, 0.3]]))
    assert exp.targets.tolist() == [0]
