"""train_classifier: train a (biased or debiased) classifier from a manifest, resumably."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bias_audit.core._device import resolve_device
from bias_audit.core.architectures import build_model
from bias_audit.core.maps import resolve_target_layer
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

__all__ = ["TrainConfig", "TrainResult", "train_classifier"]

_SELECT = ("worst_group_accuracy", "accuracy")
# Fields a resumed run may change without changing the result.
_RESUMABLE = frozenset({"epochs", "num_workers", "device"})


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on. Validated on construction.

    Attributes:
        train_manifest: manifest of the training images (see ``bias_audit.data``).
        val_manifest: manifest for per-epoch validation; None skips validation and keeps
            the last epoch.
        label: label column. groups: attribute columns; cells are groups x label.
        classes: class names in index order (default: sorted labels of the training set).
        confounders: region names whose attention ``attention_penalty`` penalises.
        arch: see ``build_model``; "smallcnn" by default.
        image_size, resize, mean, std: passed to ``load_manifest`` (mean/std None: the data
            layer's ImageNet defaults).
        epochs, batch_size, lr, weight_decay: the usual.
        optimizer: "adam" (AdamW-style decoupled decay is not used: plain Adam) or "sgd"
            (momentum 0.9).
        scheduler: "none" or "cosine" (per-epoch cosine decay to 0, stateless).
        strategy: "erm", "balanced", "reweight", "group_dro", "attention_penalty" or
            "mask_confounders" (cross-entropy on the images with the ``confounders`` pixels
            set to the dataset mean; an input edit, not an attention penalty).
        penalty_weight: λ of attention_penalty. penalty: "gradcam" (Grad-CAM mass inside
            the confounders) or "input_grad" (RRR's input-gradient energy).
        penalty_map: which Grad-CAM map the "gradcam" penalty measures: "evidence" (default:
            the share of |Grad-CAM| of every class's margin inside the confounders, see
            ``gradcam_evidence_mass``) or "label" (the ReLU'd map of the label's margin, see
            ``gradcam_mass``; it did not debias the nurse/doctor case study).
        penalty_window: odd; the Grad-CAM penalty counts a layer cell as confounder by the
            region's share of the window x window cells around it (1: the cell's own
            footprint). 3 (default) also charges the cells beside the region, whose
            receptive fields see it.
        target_layer: layer of the Grad-CAM penalty; None picks the last spatial layer.
        dro_eta: step size of the Group DRO weights.
        select: "worst_group_accuracy" (default when groups are given) or "accuracy".
        seed: the one seed (initialisation, data order, augmentation).
        device: None/"cpu", "cuda", "auto". num_workers: DataLoader workers.
        out: output folder (model.pt, last.pt, history.json).
    """

    train_manifest: str
    val_manifest: str | None = None
    label: str = "label"
    groups: tuple[str, ...] = ()
    classes: tuple[str, ...] | None = None
    confounders: tuple[str, ...] = ()
    arch: str = "smallcnn"
    image_size: int = 96
    resize: str = "crop"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    scheduler: str = "none"
    strategy: str = "erm"
    penalty_weight: float = 1.0
    penalty: str = "gradcam"
    penalty_map: str = "evidence"
    penalty_window: int = 3
    target_layer: str | None = None
    dro_eta: float = 0.01
    select: str | None = None
    seed: int = 0
    device: str | None = None
    num_workers: int = 0
    out: str = "runs/train"

    def __post_init__(self) -> None:
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        for name in ("train_manifest", "out"):
            value = getattr(self, name)
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise ConfigError(f"{name}: expected a path, got {value!r}")
            fix(name, str(value))
        if self.val_manifest is not None:
            fix("val_manifest", str(self.val_manifest))
        for name in ("groups", "confounders", "classes"):
            value = getattr(self, name)
            if value is None and name == "classes":
                continue
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name}: expected a list of names, got {value!r}")
            fix(name, tuple(value))
        for name, low in (("epochs", 1), ("batch_size", 1), ("image_size", 8), ("num_workers", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name}: expected an integer >= {low}, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed: expected an integer, got {self.seed!r}")
        for name in ("lr", "weight_decay", "penalty_weight", "dro_eta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ConfigError(f"{name}: expected a number >= 0, got {value!r}")
            fix(name, float(value))
        if self.lr <= 0:
            raise ConfigError(f"lr: expected a number > 0, got {self.lr!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                if len(value) != 3:
                    raise ConfigError(f"{name}: expected 3 numbers (R, G, B), got {value!r}")
                fix(name, tuple(float(v) for v in value))
        _choose("optimizer", self.optimizer, ("adam", "sgd"))
        _choose("scheduler", self.scheduler, ("none", "cosine"))
        _choose("strategy", self.strategy, tuple(STRATEGIES))
        _choose("penalty", self.penalty, ("gradcam", "input_grad"))
        _choose("penalty_map", self.penalty_map, ("evidence", "label"))
        w = self.penalty_window
        if not isinstance(w, int) or isinstance(w, bool) or w < 1 or w % 2 == 0:
            raise ConfigError(f"penalty_window: expected an odd integer >= 1, got {w!r}")
        _choose("resize", self.resize, ("crop", "letterbox"))
        if self.select is None:
            fix("select", "worst_group_accuracy" if self.groups else "accuracy")
        _choose("select", self.select, _SELECT)
        if self.strategy in ("attention_penalty", "mask_confounders") and not self.confounders:
            raise ConfigError(f"confounders: {self.strategy} needs at least one region name")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict (a TOML table, CLI options); unknown keys are refused by name."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown training option {key!r}{hint}")
        if "train_manifest" not in d:
            raise ConfigError("train_manifest: required")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``from_dict(to_dict())`` gives an equal config."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _choose(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {', '.join(allowed)}; got {value!r}")


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
    from bias_audit.io.data import load_manifest

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
    from torch.utils.data import DataLoader

    from bias_audit.io.data import collate

    model.eval()
    correct = torch.zeros(len(ds), dtype=torch.bool)
    loader = DataLoader(
        ds,
        batch_size=config.batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=config.num_workers,
    )
    for batch in loader:
        pred = model(batch.images.to(dev)).argmax(1).cpu()
        correct[batch.index] = pred == batch.labels
    per_cell: dict[str, float] = {}
    for name in sorted(set(cells)):
        sel = torch.tensor([c == name for c in cells])
        per_cell[name] = float(correct[sel].float().mean())
    worst = min(per_cell, key=per_cell.__getitem__) if per_cell else None
    return float(correct.float().mean()), per_cell, worst


def train_classifier(
    config: TrainConfig, *, resume: bool = False, force: bool = False, progress: bool = True
) -> TrainResult:
    """Train a classifier with the configured strategy; checkpoint atomically every epoch.

    Writes into ``config.out``: ``model.pt`` (weights of the best epoch so far by
    ``config.select``, with :class:`CheckpointMeta`), ``last.pt`` (weights, optimizer and
    strategy state after the latest epoch, for ``resume``) and ``history.json``.

    Reproducible on the CPU: the same config gives the same weights, and a run resumed from
    ``last.pt`` ends in exactly the weights of an uninterrupted one.

    Args:
        config: the run's settings.
        resume: continue from ``out/last.pt`` (``epochs`` may be raised; other settings
            must match).
        force: overwrite an existing ``out/model.pt``.
        progress: show a tqdm bar (only on a terminal).

    Raises:
        RunError: ``out/model.pt`` exists without resume/force; a resume whose settings or
            training manifest differ from the saved run's.
        ConfigError: a confounder region or group the manifest lacks.
        DataError, ModelError: from the data layer and ``build_model``.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from bias_audit.io.data import collate

    out = Path(config.out)
    model_path, last_path, history_path = out / "model.pt", out / "last.pt", out / "history.json"
    if model_path.exists() and not (resume or force):
        raise RunError(f"{model_path} exists; pass --resume or --force")
    saved = None
    if resume and last_path.exists():
        saved = read_checkpoint(last_path)
    elif resume and model_path.exists():
        raise RunError(f"{last_path}: missing, so {model_path} cannot be resumed; pass --force")

    dev = resolve_device(config.device)
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
        _check_resume(config, saved_meta, fingerprint, last_path)
        load_state_dict_strict(model, saved_state, source=str(last_path))
        opt.load_state_dict(raw["optimizer"])
        state = dict(raw.get("strategy_state", {}))
        history = [dict(h) for h in saved_meta.history]
        best_epoch, best_score = int(raw["best_epoch"]), float(raw["best_score"])
        best_state = raw["best_state_dict"]
        start = int(raw["epoch"]) + 1

    mean = tuple(float(v) for v in getattr(train_ds, "mean", config.mean or (0.0, 0.0, 0.0)))
    std = tuple(float(v) for v in getattr(train_ds, "std", config.std or (1.0, 1.0, 1.0)))

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

    show = progress and sys.stderr.isatty()
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
            # A last batch of one image would break BatchNorm in training mode.
            drop_last=n > config.batch_size and n % config.batch_size == 1,
        )
        model.train()
        loss_sum, n_seen, n_correct = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not show, leave=False)
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
        if show:
            tqdm.write(_summary(record))
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


def _check_resume(config: TrainConfig, meta: CheckpointMeta | None, fingerprint: str, path: Path):
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
                "pass --force to start over"
            )
    if meta.manifest_fingerprint != fingerprint:
        raise RunError(
            f"{path}: cannot resume: {config.train_manifest} changed since the run started "
            "(fingerprint differs); pass --force to start over"
        )
