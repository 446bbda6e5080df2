"""The audit explains a penalty-trained model at the layer its training penalised."""

from __future__ import annotations

import json

import pytest

from bias_audit.io.checkpoints import CheckpointMeta, read_metadata
from bias_audit.pipelines import TrainConfig, audit, train_classifier

from .conftest import CONFIG, MEAN, SIZE, STD

# 1/4 resolution ReLU of SmallCNN: not the layer explain would pick by itself ("features").
PENALISED = "features.11"


def _train(world, out, **changes):
    settings = dict(
        train_manifest=str(world["manifest"]), groups=("gender",), confounders=("hair",),
        arch="smallcnn_w4", image_size=SIZE, mean=MEAN, std=STD, epochs=1, batch_size=20,
        strategy="attention_penalty", seed=0, out=str(out),
    )  # fmt: skip
    settings.update(changes)
    return train_classifier(TrainConfig(**settings), progress=False)


def _audit_config(world, tmp_path, checkpoint, extra: str = "") -> str:
    head = CONFIG.format(size=SIZE).split("[[models]]")[0]
    text = head.replace("[explain]\n", f"[explain]\n{extra}") + (
        f'[[models]]\nname = "pen"\ncheckpoint = "{checkpoint}"\n'
    )
    path = world["root"] / f"layer_{tmp_path.name}.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def penalised(world, tmp_path_factory):
    return _train(world, tmp_path_factory.mktemp("pen"), target_layer=PENALISED)


def test_checkpoint_records_the_penalised_layer(world, penalised, tmp_path):
    assert read_metadata(penalised.checkpoint).target_layer == PENALISED
    # with no layer given the trainer takes explain's automatic choice and records it
    default = _train(world, tmp_path / "default")
    assert read_metadata(default.checkpoint).target_layer == "features"
    # a strategy without a Grad-CAM penalty uses no layer and records none
    erm = _train(world, tmp_path / "erm", strategy="erm")
    assert read_metadata(erm.checkpoint).target_layer is None


def test_audit_uses_the_checkpoint_layer(world, penalised, tmp_path):
    config = _audit_config(world, tmp_path, penalised.checkpoint)
    res = audit(config, out=tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    (model,) = summary["models"]
    assert model["target_layer"] == PENALISED == read_metadata(penalised.checkpoint).target_layer
    assert model["target_layer_from"] == "checkpoint"
    assert model["layer_shape"] == [SIZE // 4, SIZE // 4]
    assert res.summary["models"][0]["target_layer"] == PENALISED


def test_a_layer_in_the_config_wins(world, penalised, tmp_path):
    config = _audit_config(world, tmp_path, penalised.checkpoint, 'target_layer = "features"\n')
    audit(config, out=tmp_path / "run", progress=False)
    (model,) = json.loads((tmp_path / "run" / "summary.json").read_text())["models"]
    assert model["target_layer"] == "features" and model["target_layer_from"] == "config"
    assert model["layer_shape"] == [SIZE // 8, SIZE // 8]


def test_older_checkpoints_read_the_layer_from_their_config():
    base = dict(arch="smallcnn", classes=["a", "b"], image_size=8, mean=[0] * 3, std=[1] * 3)
    old = CheckpointMeta.from_dict({**base, "config": {"target_layer": "avgpool"}})
    assert old.target_layer == "avgpool"
    assert CheckpointMeta.from_dict({**base, "config": {"target_layer": None}}).target_layer is None
    assert CheckpointMeta.from_dict(base).target_layer is None
    new = CheckpointMeta.from_dict({**base, "target_layer": "layer4", "config": {}})
    assert new.target_layer == "layer4" and new.to_dict()["target_layer"] == "layer4"
