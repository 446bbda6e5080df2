"""load_model: build an architecture and fill it from a checkpoint, strictly and safely."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from bias_audit.core._device import resolve_device
from bias_audit.core.architectures import build_model
from bias_audit.errors import CheckpointError, ModelError
from bias_audit.io.checkpoints._checkpoint import CheckpointMeta, read_checkpoint

__all__ = ["checkpoint_arch", "load_model", "load_state_dict_strict"]


def load_model(
    arch: str | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Build a classifier and load its weights, never running pickle code.

    Examples::

        load_model("resnet18", checkpoint="biased.pt", num_classes=2)   # plain state_dict
        load_model("my_pkg.nets:build", checkpoint="m.safetensors", num_classes=10)
        load_model(checkpoint="runs/biased/model.pt")                    # our trainer's file

    Args:
        arch: see :func:`build_model`. Optional with our trainer's checkpoint (its metadata
            names it); if given it must agree.
        checkpoint: ``.pt``/``.pth`` state_dict (also wrapped under ``state_dict``/``model``
            or with ``module.`` prefixes), ``.safetensors``, or our trainer's checkpoint. None
            gives a randomly initialised model.
        num_classes: outputs. Defaults to ``len(classes)``, then to the metadata's classes,
            then to the rows of the checkpoint's last 2-D ``.weight`` (the classifier head).
        classes: class names in index order; only checked against the other sources.
        device: None/"cpu", "cuda", "cuda:N" or "auto" (see ``resolve_device``).

    Returns:
        The model in eval mode on the device.

    Raises:
        CheckpointError: unsafe or unreadable file; missing/unexpected keys or shape
            mismatches (first offending key, both shapes, counts, the path).
        ModelError: unknown architecture, or disagreeing arch / num_classes / classes.
    """
    dev = resolve_device(device)
    state, meta = None, None
    if checkpoint is not None:
        state, meta, _ = read_checkpoint(checkpoint)
    where = f"checkpoint {str(checkpoint)!r}"
    if meta is not None:
        if arch is not None and arch != meta.arch:
            raise ModelError(f"arch {arch!r} disagrees with {meta.arch!r} recorded in {where}")
        arch = arch if arch is not None else checkpoint_arch(meta, where=where)
        if classes is not None and tuple(classes) != meta.classes:
            raise ModelError(
                f"classes {list(classes)} disagree with {list(meta.classes)} recorded in {where}"
            )
        if num_classes is not None and num_classes != len(meta.classes):
            raise ModelError(
                f"num_classes={num_classes} disagrees with the {len(meta.classes)} classes "
                f"recorded in {where}"
            )
        num_classes = len(meta.classes)
    if arch is None:
        raise ModelError("arch: needed unless the checkpoint was written by bias-audit's trainer")
    if classes is not None:
        if num_classes is not None and num_classes != len(classes):
            raise ModelError(
                f"num_classes={num_classes} disagrees with the {len(classes)} classes given"
            )
        num_classes = len(classes)
    if num_classes is None:
        num_classes = _infer_num_classes(state)
        if num_classes is None:
            raise ModelError(
                f"num_classes: needed for arch {arch!r} (it cannot be read from the checkpoint)"
            )
    model = build_model(arch, num_classes=num_classes)
    if state is not None:
        load_state_dict_strict(model, state, source=str(checkpoint))
    return model.eval().to(dev)


def checkpoint_arch(meta: CheckpointMeta, *, where: str) -> str:
    """The architecture a checkpoint's metadata names, if it names no code to run.

    A checkpoint is data: it may choose a built-in architecture (smallcnn, torchvision), but a
    ``pkg.module:factory`` is imported and called only when the user writes it.

    Raises:
        ModelError: the metadata names a factory.
    """
    if ":" in meta.arch:
        raise ModelError(
            f"{where} asks for the factory {meta.arch!r}: a checkpoint never chooses code to "
            "run; write that factory as the model's arch yourself if you trust it"
        )
    return meta.arch


def _infer_num_classes(state: Mapping[str, torch.Tensor] | None) -> int | None:
    # The head is the last matrix in definition order for every torchvision classifier and
    # for smallcnn; guessing wrong is caught by the strict shape check that follows.
    if not state:
        return None
    for key in reversed(list(state)):
        if key.endswith(".weight") and state[key].ndim == 2:
            return int(state[key].shape[0])
    return None


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "state_dict"
) -> None:
    """Copy ``state`` into ``model``; every key must match in name and shape.

    Raises:
        CheckpointError: naming the first offending key (and both shapes for a mismatch),
            the counts of missing and unexpected keys, and ``source``.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected keys"
    for key, value in state.items():
        # load_state_dict would cast int8 or bool "weights" silently into float parameters.
        if key in expected and expected[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(
                f"checkpoint {source!r}: key {key!r} has dtype {value.dtype} in the checkpoint; "
                f"the model expects floating point ({expected[key].dtype})"
            )
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"checkpoint {source!r}: key {key!r} has shape {tuple(value.shape)} in the "
                f"checkpoint but {tuple(expected[key].shape)} in the model ({counts})"
            )
    if missing:
        raise CheckpointError(f"checkpoint {source!r}: missing key {missing[0]!r} ({counts})")
    if unexpected:
        raise CheckpointError(f"checkpoint {source!r}: unexpected key {unexpected[0]!r} ({counts})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {source!r}: {str(err).splitlines()[0]}") from err
