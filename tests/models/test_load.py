import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from bias_audit.core.architectures import SmallCNN, build_model
from bias_audit.errors import CheckpointError, ModelError
from bias_audit.io.checkpoints import CheckpointMeta, load_model, read_metadata, save_checkpoint


def _randomised(model: nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    # Random values everywhere (BN statistics included) so a round trip cannot pass by accident.
    return {
        k: torch.randn(v.shape, generator=gen).to(v.dtype) if v.is_floating_point() else v + 3
        for k, v in model.state_dict().items()
    }


def _assert_same(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(state)
    for k in state:
        assert torch.equal(got[k], state[k]), k


def test_smallcnn_map_is_one_eighth_and_cam_ready(gen):
    model = build_model("smallcnn", num_classes=3)
    x = torch.randn(2, 3, 96, 96, generator=gen)
    assert model.features(x).shape == (2, 128, 12, 12)
    assert model(x).shape == (2, 3)
    # GAP + one linear: the logits are the linear layer applied to the mean activation.
    model.eval()
    feats = model.features(x).mean((2, 3))
    torch.testing.assert_close(model(x), feats @ model.fc.weight.T + model.fc.bias)
    assert build_model("smallcnn_w8", num_classes=2).fc.in_features == 32


def test_build_torchvision_and_factory():
    m = build_model("resnet18", num_classes=4)
    assert m.fc.out_features == 4
    f = build_model("tests.models.factories:tiny_mlp", num_classes=7)
    assert f[-1].out_features == 7


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ("resnet181", "resnet18"),  # suggestion
        ("smalcnn", "smallcnn"),
        ("tests.models.factories:nope", "nope"),
        ("no_such_pkg_xyz.mod:f", "no_such_pkg_xyz"),
        ("tests.models.factories:not_a_module", "not_a_module"),
    ],
)
def test_build_errors(arch, match):
    with pytest.raises(ModelError, match=match):
        build_model(arch, num_classes=2)


def test_build_rejects_bad_num_classes():
    with pytest.raises(ModelError, match="num_classes"):
        build_model("smallcnn", num_classes=0)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "dataparallel"])
def test_plain_state_dict_round_trip(tmp_path, gen, wrap):
    state = _randomised(SmallCNN(3, width=4), gen)
    obj = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state},
        "dataparallel": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    path = tmp_path / "m.pth"
    torch.save(obj, path)
    model = load_model("smallcnn_w4", checkpoint=path)  # num_classes read from the head
    assert not model.training
    assert model.fc.out_features == 3
    _assert_same(model, state)
    assert read_metadata(path) is None


def test_safetensors_round_trip(tmp_path, gen):
    state = _randomised(build_model("tests.models.factories:tiny_mlp", num_classes=2), gen)
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    model = load_model("tests.models.factories:tiny_mlp", checkpoint=path, num_classes=2)
    _assert_same(model, state)
    assert not model.training


def test_our_checkpoint_round_trip(tmp_path, gen):
    state = _randomised(SmallCNN(2, width=4), gen)
    meta = CheckpointMeta(
        arch="smallcnn_w4",
        classes=("cat", "dog"),
        image_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        manifest_fingerprint="sha256:abc",
        strategy="erm",
        seed=7,
        history=({"epoch": 1, "val_acc": float("nan")},),
        best_epoch=1,
        config={"epochs": 1},
    )
    path = save_checkpoint(tmp_path / "model.pt", state, meta)
    model = load_model(checkpoint=path)
    _assert_same(model, state)
    got = read_metadata(path)
    assert got.classes == ("cat", "dog") and got.seed == 7 and got.arch == "smallcnn_w4"
    assert got.history[0]["epoch"] == 1 and got.history[0]["val_acc"] != got.history[0]["val_acc"]
    # Everything in the file loads without pickle code.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "bias-audit-checkpoint/1"
    with pytest.raises(ModelError, match="resnet18"):
        load_model("resnet18", checkpoint=path)
    with pytest.raises(ModelError, match="bird"):
        load_model(checkpoint=path, classes=["bird", "dog"])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        # Unpickling this would create the marker file: the proof that code ran.
        return (open, (str(self.marker), "w"))


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"evil\.pt.*arbitrary.*state_dict"):
        load_model("smallcnn", checkpoint=path, num_classes=2)
    with pytest.raises(CheckpointError, match="arbitrary"):
        read_metadata(path)
    assert not marker.exists()


def test_whole_pickled_module_is_refused(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(SmallCNN(2, width=4), path)
    with pytest.raises(CheckpointError, match="whole.pt.*arbitrary"):
        load_model("smallcnn_w4", checkpoint=path, num_classes=2)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nothere.pt"):
        load_model("smallcnn", checkpoint=tmp_path / "nothere.pt", num_classes=2)


def test_garbage_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_model("smallcnn", checkpoint=bad, num_classes=2)
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_model("smallcnn", checkpoint=bad_pt, num_classes=2)
    not_state = tmp_path / "list.pt"
    torch.save([1, 2], not_state)
    with pytest.raises(CheckpointError, match="list.pt.*state_dict"):
        load_model("smallcnn", checkpoint=not_state, num_classes=2)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path, gen):
    state = _randomised(SmallCNN(3, width=4), gen)
    path = tmp_path / "three.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"three\.pt.*'fc\.weight'.*\(3, 16\).*\(5, 16\)"):
        load_model("smallcnn_w4", checkpoint=path, num_classes=5)


def test_missing_and_unexpected_keys(tmp_path, gen):
    state = _randomised(SmallCNN(2, width=4), gen)
    missing = dict(state)
    del missing["fc.bias"]
    path = tmp_path / "missing.pt"
    torch.save(missing, path)
    with pytest.raises(
        CheckpointError, match=r"missing\.pt.*missing key 'fc\.bias' \(1 missing, 0 unexpected"
    ):
        load_model("smallcnn_w4", checkpoint=path, num_classes=2)
    extra = dict(state, **{"head.extra": torch.zeros(2)})
    path2 = tmp_path / "extra.pt"
    torch.save(extra, path2)
    with pytest.raises(
        CheckpointError, match=r"unexpected key 'head\.extra' \(0 missing, 1 unexpected"
    ):
        load_model("smallcnn_w4", checkpoint=path2, num_classes=2)


def test_load_without_checkpoint_and_arg_errors():
    model = load_model("smallcnn_w4", num_classes=2, device="cpu")
    assert not model.training and next(model.parameters()).device.type == "cpu"
    with pytest.raises(ModelError, match="arch"):
        load_model(num_classes=2)
    with pytest.raises(ModelError, match="num_classes"):
        load_model("smallcnn_w4")
    with pytest.raises(ModelError, match="num_classes=3"):
        load_model("smallcnn_w4", num_classes=3, classes=["a", "b"])


def test_pretrained_torchvision_state_dict_from_local_file(tmp_path, gen):
    # Pretrained weights are just a local state_dict: no download is involved.
    state = build_model("resnet18", num_classes=10).state_dict()
    path = tmp_path / "resnet18-local.pth"
    torch.save(state, path)
    model = load_model("resnet18", checkpoint=path)
    assert model.fc.out_features == 10
    assert os.path.getsize(path) > 0


@pytest.mark.parametrize("arch", ["tests.models.evil_factory:build", "os:system"])
def test_checkpoint_metadata_never_chooses_code(tmp_path, monkeypatch, arch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("BIAS_AUDIT_TEST_MARKER", str(marker))
    meta = CheckpointMeta(
        arch=arch, classes=("a", "b"), image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    path = save_checkpoint(tmp_path / "model.pt", SmallCNN(2, width=4).state_dict(), meta)
    with pytest.raises(ModelError, match=rf"model\.pt.*{arch}.*never chooses code"):
        load_model(checkpoint=path)
    assert not marker.exists()
    # The user naming the factory is the only way it runs.
    if arch.startswith("tests."):
        with pytest.raises(SystemExit):
            load_model(arch, checkpoint=path)
        assert marker.exists()


_GOOD_META = {
    "arch": "tests.models.evil_factory:build",
    "classes": ["a", "b"],
    "image_size": 16,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("image_size", 100000, r"'image_size': expected an integer between 8 and 4096, got 100000"),
        ("image_size", "224", r"'image_size': expected an integer"),
        ("image_size", True, r"'image_size': expected an integer"),
        ("classes", "ab", r"'classes': expected a non-empty list of distinct class names"),
        ("classes", ["a", "a"], r"'classes': expected a non-empty list of distinct"),
        ("classes", [], r"'classes': expected a non-empty list"),
        ("classes", [1, 2], r"'classes': expected a non-empty list"),
        ("mean", [0.5, 0.5], r"'mean': expected 3 finite numbers, got \[0.5, 0.5\]"),
        ("mean", [float("nan")] * 3, r"'mean': expected 3 finite numbers"),
        ("std", [0.25, 0.0, 0.25], r"'std': expected 3 finite numbers > 0"),
        ("std", {"x": 1}, r"'std': expected 3 finite numbers > 0"),
        ("arch", 5, r"'arch': expected an architecture name"),
        ("arch", "x" * 300, r"'arch': expected an architecture name.*\.\.\.$"),
        ("seed", "7", r"'seed': expected an integer or null"),
        ("history", "nope", r"'history': expected a list of dicts"),
        ("resize", "stretch", r"'resize': expected one of"),
    ],
)
def test_checkpoint_metadata_is_validated_like_a_config(tmp_path, monkeypatch, key, value, match):
    # The metadata names the evil factory: validation must refuse before anything is built.
    marker = tmp_path / "ran"
    monkeypatch.setenv("BIAS_AUDIT_TEST_MARKER", str(marker))
    path = tmp_path / "meta.pt"
    state = SmallCNN(2, width=4).state_dict()
    torch.save(
        {"format": "bias-audit-checkpoint/1", "state_dict": state,
         "meta": {**_GOOD_META, key: value}},
        path,
    )  # fmt: skip
    with pytest.raises(CheckpointError, match=rf"meta\.pt'?: metadata {match}"):
        load_model("tests.models.evil_factory:build", checkpoint=path)
    with pytest.raises(CheckpointError, match=r"meta\.pt"):
        read_metadata(path)
    assert not marker.exists()


def test_random_bytes_are_not_reported_as_pickle_code(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
                     .to(torch.uint8).numpy().tobytes())  # fmt: skip
    with pytest.raises(CheckpointError, match=r"noise\.pt.*not a readable torch file") as info:
        load_model("smallcnn", checkpoint=path, num_classes=2)
    assert "pickle code" not in str(info.value)


def test_integer_weights_are_refused(tmp_path, gen):
    state = SmallCNN(2, width=4).state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].to(torch.int8)
    path = tmp_path / "int8.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=rf"int8\.pt.*{key!r} has dtype torch.int8"):
        load_model("smallcnn_w4", checkpoint=path, num_classes=2)
