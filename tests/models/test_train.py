import json
import math

import pytest
import torch

from bias_audit.errors import ConfigError, RunError
from bias_audit.io.checkpoints import load_model, read_checkpoint, read_metadata
from bias_audit.io.data import collate, load_manifest
from bias_audit.pipelines import TrainConfig, train_classifier

from .conftest import spurious_config

COUNTER = ("red / ring", "blue / cross")


def _counter_accuracy(model, ds) -> tuple[float, float]:
    """(accuracy on the counter-stereotypical cells, worst-cell accuracy), computed directly."""
    batch = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        pred = model(batch.images).argmax(1)
    correct = pred == batch.labels
    pairs = zip(batch.attrs["spot"], batch.labels.tolist(), strict=True)
    cells = [f"{s} / {ds.classes[y]}" for s, y in pairs]
    acc = {c: correct[[x == c for x in cells]].float().mean().item() for c in set(cells)}
    counter = correct[[c in COUNTER for c in cells]].float().mean().item()
    return counter, min(acc.values())


@pytest.fixture(scope="module")
def val_ds(spurious):
    return load_manifest(
        spurious["val"], groups=["spot"], image_size=40, mean=(0.5,) * 3, std=(0.25,) * 3
    )


@pytest.mark.slow
def test_erm_takes_the_shortcut(strategy_runs, val_ds):
    cfg, res = strategy_runs("erm")
    model = load_model(checkpoint=res.checkpoint)
    counter, worst = _counter_accuracy(model, val_ds)
    assert counter < 0.7
    # The trainer's own validation agrees with a direct evaluation of the saved model.
    assert res.history[res.best_epoch - 1]["val_worst_group_acc"] == pytest.approx(worst)


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy", ["balanced", "group_dro", "attention_penalty", "mask_confounders"]
)
def test_strategies_raise_worst_group_accuracy(strategy_runs, val_ds, strategy):
    _, erm = strategy_runs("erm")
    _, res = strategy_runs(strategy)
    _, erm_worst = _counter_accuracy(load_model(checkpoint=erm.checkpoint), val_ds)
    _, worst = _counter_accuracy(load_model(checkpoint=res.checkpoint), val_ds)
    assert worst >= erm_worst + 0.2, (strategy, worst, erm_worst)


def test_checkpoint_metadata_and_history(strategy_runs, spurious):
    cfg, res = strategy_runs("erm")
    meta = read_metadata(res.checkpoint)
    train_ds = load_manifest(spurious["train"], groups=["spot"], image_size=40)
    assert meta.arch == "smallcnn_w8" and meta.classes == ("cross", "ring")
    assert meta.image_size == 40 and meta.mean == (0.5, 0.5, 0.5) and meta.std == (0.25,) * 3
    assert meta.manifest_fingerprint == train_ds.fingerprint()
    assert meta.strategy == "erm" and meta.seed == 0 and meta.best_epoch == res.best_epoch
    assert [h["epoch"] for h in meta.history] == [1, 2, 3, 4]
    assert (
        TrainConfig.from_dict({k: v for k, v in meta.config.items() if k != "target_layer"}) == cfg
    )
    # best epoch by worst-group accuracy, earliest on ties
    scores = [h["val_worst_group_acc"] for h in res.history]
    assert res.best_epoch == scores.index(max(scores)) + 1
    on_disk = json.loads((res.checkpoint.parent / "history.json").read_text())
    assert [h["train_loss"] for h in on_disk] == pytest.approx(
        [h["train_loss"] for h in res.history]
    )
    # model.pt holds the best epoch's weights, last.pt the final ones
    _, _, raw = read_checkpoint(res.last_checkpoint)
    assert raw["epoch"] == 4
    best, _, _ = read_checkpoint(res.checkpoint)
    for k, v in raw["best_state_dict"].items():
        assert torch.equal(best[k], v)


@pytest.mark.parametrize("strategy", ["group_dro", "balanced"])
def test_resume_matches_uninterrupted_run(small_spurious, tmp_path, strategy):
    changes = dict(strategy=strategy, epochs=2, val_manifest=None)
    straight = train_classifier(
        spurious_config(small_spurious, tmp_path / "straight", **changes), progress=False
    )
    first = spurious_config(small_spurious, tmp_path / "resumed", **{**changes, "epochs": 1})
    train_classifier(first, progress=False)
    with pytest.raises(RunError, match="model.pt.*exists"):
        train_classifier(first, progress=False)
    second = spurious_config(small_spurious, tmp_path / "resumed", **changes)
    resumed = train_classifier(second, resume=True, progress=False)
    for name in ("checkpoint", "last_checkpoint"):
        a, _, raw_a = read_checkpoint(getattr(straight, name))
        b, _, raw_b = read_checkpoint(getattr(resumed, name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    if strategy == "group_dro":
        q_a, q_b = raw_a["strategy_state"]["q"], raw_b["strategy_state"]["q"]
        assert torch.equal(q_a, q_b) and not torch.allclose(q_a, torch.full_like(q_a, 0.25))
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]
    assert math.isnan(resumed.history[-1]["val_acc"])


def test_resume_refuses_changed_settings(small_spurious, tmp_path):
    cfg = spurious_config(small_spurious, tmp_path, epochs=1, val_manifest=None)
    train_classifier(cfg, progress=False)
    changed = spurious_config(small_spurious, tmp_path, epochs=2, val_manifest=None, lr=1e-2)
    with pytest.raises(RunError, match="'lr'"):
        train_classifier(changed, resume=True, progress=False)
    # --force starts over
    res = train_classifier(changed, force=True, progress=False)
    assert res.best_epoch == 2
    res.last_checkpoint.unlink()
    with pytest.raises(RunError, match="last.pt"):
        train_classifier(changed, resume=True, progress=False)


def test_unknown_target_layer(small_spurious, tmp_path):
    cfg = spurious_config(
        small_spurious, tmp_path, strategy="attention_penalty", target_layer="layer9", epochs=1
    )
    with pytest.raises(ConfigError, match="layer9"):
        train_classifier(cfg, progress=False)


def test_reweight_and_other_penalties_train(small_spurious, tmp_path):
    runs = (
        ("reweight", {}),
        ("attention_penalty", {"penalty": "input_grad"}),
        ("attention_penalty", {"penalty_map": "label"}),
    )
    for i, (strategy, extra) in enumerate(runs):
        cfg = spurious_config(
            small_spurious,
            tmp_path / f"{i}_{strategy}",
            strategy=strategy,
            epochs=1,
            val_manifest=None,
            **extra,
        )
        res = train_classifier(cfg, progress=False)
        assert math.isfinite(res.history[0]["train_loss"])
        assert load_model(checkpoint=res.checkpoint)(torch.zeros(1, 3, 40, 40)).shape == (1, 2)


def test_unknown_confounder_region(small_spurious, tmp_path):
    cfg = spurious_config(
        small_spurious, tmp_path, confounders=("hat",), strategy="attention_penalty"
    )
    with pytest.raises(ConfigError, match="'hat'"):
        train_classifier(cfg, progress=False)


def test_config_from_dict_round_trip_and_errors(spurious):
    cfg = TrainConfig.from_dict({"train_manifest": "m.csv", "groups": ["a"], "epochs": 3})
    assert cfg.groups == ("a",) and cfg.select == "worst_group_accuracy"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(train_manifest="m.csv").select == "accuracy"
    with pytest.raises(ConfigError, match="'lrr'.*'lr'"):
        TrainConfig.from_dict({"train_manifest": "m.csv", "lrr": 0.1})
    with pytest.raises(ConfigError, match="train_manifest"):
        TrainConfig.from_dict({"epochs": 1})


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"strategy": "dro"}, "strategy"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"penalty": "l2"}, "penalty"),
        ({"penalty_map": "relu"}, "penalty_map"),
        ({"penalty_window": 2}, "penalty_window"),
        ({"select": "f1"}, "select"),
        ({"strategy": "attention_penalty"}, "confounders"),
        ({"strategy": "mask_confounders"}, "confounders"),
        ({"groups": ["spot", 3]}, "groups"),
        ({"penalty_window": 1.5}, "penalty_window"),
        ({"image_size": 5000}, r"\[train\] image_size: expected an integer between 8 and 4096"),
        ({"mean": (0.5, 0.5)}, "mean"),
    ],
)
def test_config_validation(changes, match):
    # One rule for every config: a lone name is a list of one, never a string of letters.
    assert TrainConfig(train_manifest="m.csv", groups="spot").groups == ("spot",)
    with pytest.raises(ConfigError, match=match):
        TrainConfig(train_manifest="m.csv", **changes)


def test_progress_bar_and_epoch_summary_on_a_terminal(
    small_spurious, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    cfg = spurious_config(small_spurious, tmp_path, epochs=1)
    train_classifier(cfg, progress=True)
    err = capsys.readouterr()
    text = err.err + err.out
    assert "epoch 1/1" in text and "loss" in text and "acc" in text


def test_same_weights_on_one_and_two_threads(small_spurious, tmp_path):
    # The caller's thread count must not reach the weights: a kernel that splits its sums by
    # thread would differ in the last bits after one step, and more after two epochs.
    states = {}
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            cfg = spurious_config(
                small_spurious, tmp_path / f"t{threads}", epochs=2, val_manifest=None
            )
            result = train_classifier(cfg, progress=False)
            # the caller's settings come back
            assert torch.get_num_threads() == threads
            assert not torch.are_deterministic_algorithms_enabled()
            states[threads] = read_checkpoint(result.last_checkpoint)[0]
    finally:
        torch.set_num_threads(before)
    assert states[1].keys() == states[2].keys()
    for k in states[1]:
        assert torch.equal(states[1][k], states[2][k]), k


def test_epoch_lines_when_stderr_is_not_a_terminal(small_spurious, tmp_path, capsys):
    cfg = spurious_config(small_spurious, tmp_path, epochs=2, val_manifest=None)
    result = train_classifier(cfg, progress=True)  # pytest's captured stderr is no terminal
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("epoch ")]
    assert len(lines) == 2
    for line, record in zip(lines, result.history, strict=True):
        assert line.startswith(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}")
    train_classifier(cfg, force=True, progress=False)
    assert capsys.readouterr().err == ""
