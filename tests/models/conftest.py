"""Session-scoped generated data and training runs shared by the models tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from bias_audit.pipelines import TrainConfig, train_classifier

from .spurious import write_spurious


@pytest.fixture(scope="session")
def spurious(tmp_path_factory) -> dict[str, Path]:
    # 3% counter-stereotypical training images (12 of 400): with none, balanced sampling and
    # Group DRO would have no counter cells to upweight; with this few, ERM still takes the
    # colour shortcut within the 4 epochs we train, while the strategies can learn the shape.
    root = tmp_path_factory.mktemp("spurious")
    return {
        "train": write_spurious(root / "train", 400, p_align=0.97, seed=1),
        "val": write_spurious(root / "val", 200, p_align=0.5, seed=2),
        "root": root,
    }


def spurious_config(data: dict[str, Path], out: Path, **changes) -> TrainConfig:
    settings = dict(
        train_manifest=str(data["train"]),
        val_manifest=str(data["val"]) if data["val"] else None,
        groups=("spot",),
        confounders=("spot",),
        arch="smallcnn_w8",
        image_size=40,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        epochs=4,
        batch_size=16 if data["val"] is None else 32,
        lr=3e-3,
        dro_eta=0.1,
        penalty_weight=5.0,
        seed=0,
        out=str(out),
    )
    settings.update(changes)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def small_spurious(tmp_path_factory) -> dict[str, Path]:
    """64 training images: enough for the resume and option tests, which need no accuracy."""
    root = tmp_path_factory.mktemp("small")
    return {"train": write_spurious(root / "train", 64, p_align=0.9, seed=3), "val": None}


@pytest.fixture(scope="session")
def strategy_runs(spurious, tmp_path_factory):
    """Train each strategy once per session: {strategy: TrainResult}."""
    cache = {}

    def run(strategy: str):
        if strategy not in cache:
            out = tmp_path_factory.mktemp(f"run_{strategy}")
            cfg = spurious_config(spurious, out, strategy=strategy)
            cache[strategy] = (cfg, train_classifier(cfg, progress=False))
        return cache[strategy]

    return run
