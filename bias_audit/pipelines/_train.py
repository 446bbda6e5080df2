"""train_classifier: train a (biased or debiased) classifier from a manifest, resumably."""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from bias_audit.core._device import resolve_device
from bias_audit.core._malloc import keep_freed_memory
from bias_audit.core.architectures import build_model
from bias_audit.core.config import TrainConfig
from bias_audit.core.maps import resolve_target_layer
from bias_audit.core.stats import worst_group
from bias_audit.core.training._strategies import (
    BALANCED_SAMPLING,
    STRATEGIES,
    Step,
    cell_sampling_weights,
    initial_state,
)
from bias_audit.errors import ConfigError, RunError
from bias_audit.io._files import write_json
from bias_audit.io.checkpoints._checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from bias_audit.io.checkpoints._load import load_state_dict_strict
from bias_audit.io.data import collate, load_manifest

__all__ = ["TrainConfig", "TrainResult", "train_classifier"]  # TrainConfig: re-exported

# Fields a resumed run may change without changing the result.
_RESUMABLE = frozenset({"epochs", "num_workers", "device"})

#: torch's intra-op threads while training. A CPU kernel splits its sums by thread, so weights
#: trained on 1 and on 2 threads differ after one epoch (by up to 1e-2 after two epochs of a
#: small CNN); a fixed count makes the caller's setting irrelevant. One, not two: on a 2-core
#: machine shared with other jobs two threads fight for the cores, and on an idle one the
#: small case-study CNN gains little from the second (measured in the nurse/doctor README).
TRAIN_THREADS = 1


@contextmanager
def _reproducible(dev: torch.device) -> Iterator[None]:
    """Deterministic kernels and :data:`TRAIN_THREADS` threads; the caller's settings restored."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    torch.set_num_threads(TRAIN_THREADS)
    # On CUDA a few kernels have no deterministic version (and cuBLAS needs an environment
    # variable set before start-up): warn there rather than refuse to train.
    torch.use_deterministic_algorithms(True, warn_only=dev.type != "cpu")
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


def _seed_worker(worker_id: int) -> None:
    # A worker's torch seed derives from the loader's generator; numpy and random (which a
    # user's transform may draw from) are seeded from it too, not from the fork's copy.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_classifier`.

    Attributes:
        checkpoint: ``out/model.pt``, the weights of the best epoch with metadata.
        last_checkpoint: ``out/last.pt``, the resume state after the last epoch.
        best_epoch: 1-based.
        history: one dict per epoch: epoch, lr, train_loss, train_acc, val_acc,
            val_worst_group_acc, val_worst_group, val_cells ({cell: accuracy}), seconds.
            Validation values are NaN (val_cells empty) without a val_manifest.
    """

    checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    history: tuple[dict[str, Any], ...]


def _epoch_seed(seed: int, epoch: int) -> int:
    # One stream per (seed, epoch): a resumed epoch sees exactly the data order it would have.
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def _load_data(config: TrainConfig, path: str, *, augment: bool, classes: Any) -> Any:

    kwargs: dict[str, Any] = {}
    if config.mean is not None:
        kwargs["mean"] = config.mean
    if config.std is not None:
        kwargs["std"] = config.std
    return load_manifest(
        path,
        label=config.label,
        groups=config.groups,
        classes=classes,
        image_size=config.image_size,
        resize=config.resize,
        augment=augment,
        seed=config.seed,
        **kwargs,
    )


def _confounder_union(batch: Any, confounders: tuple[str, ...]) -> Tensor:
    masks = batch.masks  # (N,R,S,S) bool, absent regions all False
    idx = [batch.regions.index(name) for name in confounders if name in batch.regions]
    n, _, s, _ = batch.images.shape
    if not idx or masks.numel() == 0:
        return torch.zeros(n, s, s, dtype=torch.bool)
    present = batch.present[:, idx]  # (N,k)
    return (masks[:, idx] & present[:, :, None, None]).any(dim=1)


@torch.no_grad()
def _validate(model: nn.Module, ds: Any, cells: list[str], config: TrainConfig, dev: torch.device):

    model.eval()
    correct = torch.zeros(len(ds), dtype=torch.bool)
    loader = DataLoader(
        ds,
        batch_size=config.batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=config.num_workers,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(config.seed),
    )
    for batch in loader:
        pred = model(batch.images.to(dev)).argmax(1).cpu()
        correct[batch.index] = pred == batch.labels
    per_cell: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for name in sorted(set(cells)):
        sel = torch.tensor([c == name for c in cells])
        per_cell[name] = float(correct[sel].float().mean())
        sizes[name] = int(sel.sum())
    # The worst cell is chosen by the one worst-group rule of core.stats (every cell judged).
    table = pd.DataFrame(
        {"model": "validation", "cell": list(per_cell), "metric": "accuracy",
         "value": list(per_cell.values()), "n_valid": list(sizes.values()), "small": False}
    )  # fmt: skip
    row = worst_group(table).iloc[0] if per_cell else None
    worst = row["cell"] if row is not None and row["n_cells"] else None
    return float(correct.float().mean()), per_cell, worst


def train_classifier(
    config: TrainConfig, *, resume: bool = False, force: bool = False, progress: bool = True
) -> TrainResult:
    """Train a classifier with the configured strategy; checkpoint atomically every epoch.

    Writes into ``config.out``: ``model.pt`` (weights of the best epoch so far by
    ``config.select``, with :class:`CheckpointMeta`), ``last.pt`` (weights, optimizer and
    strategy state after the latest epoch, for ``resume``) and ``history.json``.

    Reproducible on the CPU: the same config gives the same weights, bit for bit, whatever the
    caller's thread count (training runs on :data:`TRAIN_THREADS` threads with deterministic
    kernels, both restored afterwards), and a run resumed from ``last.pt`` ends in exactly the
    weights of an uninterrupted one.

    Args:
        config: the run's settings.
        resume: continue from ``out/last.pt`` (``epochs`` may be raised; other settings
            must match).
        force: overwrite an existing ``out/model.pt``.
        progress: report each epoch on stderr: a tqdm bar and a summary line on a terminal,
            the summary line alone otherwise.

    Raises:
        RunError: ``out/model.pt`` exists without resume/force; a resume whose settings or
            training manifest differ from the saved run's.
        ConfigError: a confounder region or group the manifest lacks.
        DataError, ModelError: from the data layer and ``build_model``.
    """
    keep_freed_memory()

    out = Path(config.out)
    model_path, last_path = out / "model.pt", out / "last.pt"
    if model_path.exists() and not (resume or force):
        raise RunError(
            f"{model_path} exists; pass resume=True to continue it or force=True to start over"
        )
    saved = None
    if resume and last_path.exists():
        saved = read_checkpoint(last_path)
    elif resume and model_path.exists():
        raise RunError(
            f"{last_path}: missing, so {model_path} cannot be resumed; pass force=True to "
            "start over"
        )

    dev = resolve_device(config.device)
    with _reproducible(dev):
        return _fit(config, saved, dev, progress)


def _fit(config: TrainConfig, saved: Any, dev: torch.device, progress: bool) -> TrainResult:
    out = Path(config.out)
    model_path, last_path, history_path = out / "model.pt", out / "last.pt", out / "history.json"
    train_ds = _load_data(config, config.train_manifest, augment=True, classes=config.classes)
    classes = tuple(train_ds.classes)
    for name in config.confounders:
        if name not in train_ds.regions:
            raise ConfigError(
                f"confounders: region {name!r} is not in {config.train_manifest} "
                f"(regions: {', '.join(train_ds.regions) or 'none'})"
            )
    val_ds = None
    if config.val_manifest is not None:
        val_ds = _load_data(config, config.val_manifest, augment=False, classes=classes)
        val_cells = val_ds.sample_cells()
    train_cell_names = train_ds.sample_cells()
    cell_index = {name: i for i, name in enumerate(sorted(set(train_cell_names)))}
    sample_cells = torch.tensor([cell_index[c] for c in train_cell_names], dtype=torch.long)
    n_cells = len(cell_index)
    fingerprint = train_ds.fingerprint()

    torch.manual_seed(config.seed)
    model = build_model(config.arch, num_classes=len(classes)).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            params, lr=config.lr, weight_decay=config.weight_decay
        )
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    target_layer, reshape = config.target_layer, None
    if config.strategy == "attention_penalty" and config.penalty == "gradcam":
        # explain's resolver: the checkpoint records this layer and the audit reads it back.
        target_layer, _, reshape = resolve_target_layer(
            model, config.target_layer, train_ds[0].image[None].to(dev), None
        )

    state = initial_state(config.strategy, sample_cells, n_cells)
    history: list[dict[str, Any]] = []
    best_epoch, best_score, best_state = 0, -math.inf, None
    start = 1
    if saved is not None:
        saved_state, saved_meta, raw = saved
        saved_meta = _check_resume(config, saved_meta, fingerprint, last_path)
        load_state_dict_strict(model, saved_state, source=str(last_path))
        opt.load_state_dict(raw["optimizer"])
        state = dict(raw.get("strategy_state", {}))
        history = [dict(h) for h in saved_meta.history]
        best_epoch, best_score = int(raw["best_epoch"]), float(raw["best_score"])
        best_state = raw["best_state_dict"]
        start = int(raw["epoch"]) + 1

    mean = _rgb(getattr(train_ds, "mean", config.mean or (0.0, 0.0, 0.0)))
    std = _rgb(getattr(train_ds, "std", config.std or (1.0, 1.0, 1.0)))

    def meta(epoch_best: int) -> CheckpointMeta:
        cfg = config.to_dict()
        cfg["target_layer"] = target_layer
        return CheckpointMeta(
            arch=config.arch,
            classes=classes,
            image_size=config.image_size,
            mean=mean,
            std=std,
            resize=config.resize,
            manifest_fingerprint=fingerprint,
            strategy=config.strategy,
            seed=config.seed,
            history=tuple(history),
            best_epoch=epoch_best,
            config=cfg,
            target_layer=target_layer,
        )

    # A bar on a terminal; one line per epoch otherwise (a log file, CI), so a long training
    # is never silent.
    bar_on = progress and sys.stderr.isatty()
    sample_weights = cell_sampling_weights(sample_cells, n_cells)
    n = len(train_ds)
    for epoch in range(start, config.epochs + 1):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch))
        torch.manual_seed(_epoch_seed(config.seed, epoch))  # dropout and the like
        if config.strategy in BALANCED_SAMPLING:
            order = torch.multinomial(sample_weights, n, replacement=True, generator=gen)
        else:
            order = torch.randperm(n, generator=gen)
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        lr = config.lr
        if config.scheduler == "cosine":
            lr = config.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / config.epochs))
        for group in opt.param_groups:
            group["lr"] = lr
        loader = DataLoader(
            train_ds,
            batch_size=config.batch_size,
            sampler=order.tolist(),
            collate_fn=collate,
            num_workers=config.num_workers,
            worker_init_fn=_seed_worker,
            generator=gen,
            # A last batch of one image would break BatchNorm in training mode.
            drop_last=n > config.batch_size and n % config.batch_size == 1,
        )
        model.train()
        loss_sum, n_seen, n_correct = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not bar_on, leave=False)
        for batch in bar:
            images, labels = batch.images.to(dev), batch.labels.to(dev)
            step = Step(
                model=model,
                images=images,
                labels=labels,
                cells=sample_cells[batch.index].to(dev),
                n_cells=n_cells,
                confounder=_confounder_union(batch, config.confounders).to(dev),
                state=state,
                config=config,
                target_layer=target_layer,
                target_reshape=reshape,
            )
            loss, logits = STRATEGIES[config.strategy](step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            k = len(labels)
            loss_sum += float(loss.detach()) * k
            n_seen += k
            n_correct += int((logits.detach().argmax(1) == labels).sum())
            bar.set_postfix(loss=f"{loss_sum / n_seen:.3f}", acc=f"{n_correct / n_seen:.3f}")
        bar.close()
        record: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": loss_sum / max(n_seen, 1),
            "train_acc": n_correct / max(n_seen, 1),
            "val_acc": math.nan,
            "val_worst_group_acc": math.nan,
            "val_worst_group": None,
            "val_cells": {},
        }
        if val_ds is not None:
            acc, per_cell, worst = _validate(model, val_ds, val_cells, config, dev)
            record.update(
                val_acc=acc,
                val_worst_group_acc=per_cell[worst] if worst else math.nan,
                val_worst_group=worst,
                val_cells=per_cell,
            )
            score = acc if config.select == "accuracy" else record["val_worst_group_acc"]
        else:
            score = float(epoch)  # without validation the latest epoch is the best
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        if score > best_score or best_state is None:
            best_epoch, best_score = epoch, score
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        save_checkpoint(model_path, best_state, meta(best_epoch))
        save_checkpoint(
            last_path,
            model.state_dict(),
            meta(best_epoch),
            optimizer=opt.state_dict(),
            strategy_state=dict(state),
            epoch=epoch,
            best_epoch=best_epoch,
            best_score=best_score,
            best_state_dict=best_state,
        )
        write_json(history_path, history)
        if bar_on:
            tqdm.write(_summary(record), file=sys.stderr)
        elif progress:
            print(f"{_summary(record)} ({record['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return TrainResult(
        checkpoint=model_path,
        last_checkpoint=last_path,
        best_epoch=best_epoch,
        history=tuple(history),
    )


def _summary(r: Mapping[str, Any]) -> str:
    text = f"epoch {r['epoch']}: loss {r['train_loss']:.4f}, train acc {r['train_acc']:.3f}"
    if not math.isnan(r["val_acc"]):
        text += (
            f", val acc {r['val_acc']:.3f}, worst group {r['val_worst_group']!r} "
            f"{r['val_worst_group_acc']:.3f}"
        )
    return text


def _rgb(values: Sequence[float]) -> tuple[float, float, float]:
    # Three: load_manifest and the config have checked it.
    r, g, b = (float(v) for v in values)
    return r, g, b


def _check_resume(
    config: TrainConfig, meta: CheckpointMeta | None, fingerprint: str, path: Path
) -> CheckpointMeta:
    """``meta`` when the run in ``path`` can be resumed with ``config``; raises otherwise."""
    if meta is None:
        raise RunError(f"{path}: not a bias-audit resume file")
    saved = dict(meta.config)
    saved.pop("target_layer", None)
    now = config.to_dict()
    for key in now:
        if key in _RESUMABLE:
            continue
        if saved.get(key) != now[key]:
            raise RunError(
                f"{path}: cannot resume: {key!r} was {saved.get(key)!r}, now {now[key]!r}; "
                "pass force=True to start over"
            )
    if meta.manifest_fingerprint != fingerprint:
        raise RunError(
            f"{path}: cannot resume: {config.train_manifest} changed since the run started "
            "(fingerprint differs); pass force=True to start over"
        )
    return meta
