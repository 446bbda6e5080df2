"""Checkpoint files: read them safely (never run pickle code), write ours atomically.

Three kinds are read:

1. a plain ``state_dict`` in ``.pt``/``.pth`` (``torch.load(weights_only=True)``), also when it is
   wrapped as ``{"state_dict": ...}`` or ``{"model": ...}`` or saved from ``DataParallel``
   (every key prefixed with ``module.``);
2. ``.safetensors``;
3. our trainer's checkpoint: ``{"format": FORMAT, "state_dict": ..., "meta": {...}}`` (plus
   optimizer and RNG states in the resume file ``last.pt``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from bias_audit.core.config import IMAGE_SIZE_RANGE, RESIZE
from bias_audit.errors import CheckpointError
from bias_audit.io._files import atomic_write

__all__ = ["FORMAT", "CheckpointMeta", "read_checkpoint", "read_metadata", "save_checkpoint"]

FORMAT = "bias-audit-checkpoint/1"

_UNSAFE_HINT = (
    "refused: loading it would run arbitrary pickle code (it holds Python objects, not just "
    "tensors); if you trust it, re-save only its weights with "
    "torch.save(model.state_dict(), path) or use .safetensors"
)


@dataclass(frozen=True, kw_only=True)
class CheckpointMeta:
    """What our trainer records beside the weights.

    Attributes:
        arch: name given to :func:`build_model`.
        classes: class names in logit index order.
        image_size: side S of the square training images.
        mean, std: per-channel normalisation of the images (RGB, 0-1 scale).
        resize: the data layer's resize mode ("crop", ...).
        manifest_fingerprint: fingerprint of the training manifest.
        strategy: training strategy ("erm", "balanced", ...).
        seed: the run's seed.
        history: one dict per epoch (losses, accuracies; NaN written as null).
        best_epoch: 1-based epoch whose weights the checkpoint holds.
        config: the full training config as a JSON-able dict.
        target_layer: dotted name of the layer the attention penalty was computed at (the
            audit uses it when its config names none); None when training used no layer.
    """

    arch: str
    classes: tuple[str, ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "crop"
    manifest_fingerprint: str | None = None
    strategy: str | None = None
    seed: int | None = None
    history: tuple[dict[str, Any], ...] = ()
    best_epoch: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    target_layer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["history"] = [dict(h) for h in self.history]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "meta") -> CheckpointMeta:
        """Validate metadata like a config: a checkpoint is input, so a wrong type or an
        out-of-range value (``image_size = 100000`` would allocate 30 GB) is refused by key."""
        if not isinstance(d, Mapping):
            raise CheckpointError(f"{source}: metadata: expected a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        # Unknown keys are kept out rather than refused: a newer writer may add fields.
        kwargs = {k: v for k, v in d.items() if k in names}
        for key in ("arch", "classes", "image_size", "mean", "std"):
            if key not in kwargs:
                raise CheckpointError(f"{source}: metadata lacks key {key!r}")

        def bad(key: str, what: str) -> CheckpointError:
            value = repr(kwargs[key])
            value = value if len(value) <= 80 else value[:77] + "..."
            return CheckpointError(f"{source}: metadata {key!r}: expected {what}, got {value}")

        arch = kwargs["arch"]
        if not isinstance(arch, str) or not arch or len(arch) > 200 or not arch.isprintable():
            raise bad("arch", "an architecture name (one line, at most 200 characters)")
        classes = kwargs["classes"]
        if (
            not isinstance(classes, list | tuple)
            or not classes
            or not all(isinstance(c, str) and c and c.isprintable() for c in classes)
            or len(set(classes)) != len(classes)
        ):
            raise bad("classes", "a non-empty list of distinct class names")
        kwargs["classes"] = tuple(classes)
        lo, hi = IMAGE_SIZE_RANGE
        size = kwargs["image_size"]
        if isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
            raise bad("image_size", f"an integer between {lo} and {hi}")
        for key in ("mean", "std"):
            v = kwargs[key]
            if (
                not isinstance(v, list | tuple)
                or len(v) != 3
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
                or not all(math.isfinite(x) for x in v)
                or (key == "std" and min(v) <= 0)
            ):
                raise bad(key, "3 finite numbers" + (" > 0" if key == "std" else ""))
            kwargs[key] = tuple(float(x) for x in v)
        if "resize" in kwargs and kwargs["resize"] not in RESIZE:
            raise bad("resize", f"one of {list(RESIZE)}")
        for key in ("manifest_fingerprint", "strategy"):
            if kwargs.get(key) is not None and not isinstance(kwargs[key], str):
                raise bad(key, "a string or null")
        for key in ("seed", "best_epoch"):
            v = kwargs.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise bad(key, "an integer or null")
        history = kwargs.get("history", ())
        if not isinstance(history, list | tuple) or not all(
            isinstance(h, Mapping) for h in history
        ):
            raise bad("history", "a list of dicts")
        kwargs["history"] = tuple(dict(h) for h in history)
        if not isinstance(kwargs.get("config", {}), Mapping):
            raise bad("config", "a dict")
        kwargs["config"] = dict(kwargs.get("config", {}))
        # Older checkpoints kept the penalised layer only in their config.
        layer = kwargs.get("target_layer", kwargs["config"].get("target_layer"))
        if layer is not None and (not isinstance(layer, str) or not layer.isprintable()):
            raise bad("target_layer", "a layer name or null")
        kwargs["target_layer"] = layer
        return cls(**kwargs)


def _load_raw(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: not a readable safetensors file: {err}"
            ) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # Only a reference to a Python global means code would run; random bytes also fail
        # the weights-only unpickler, with "Unsupported operand", and are just not a checkpoint.
        if "unsupported global" in str(err).lower():
            raise CheckpointError(f"checkpoint {str(path)!r}: {_UNSAFE_HINT}") from err
        raise CheckpointError(
            f"checkpoint {str(path)!r}: not a readable torch file: {_first_line(err)}"
        ) from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: not a readable torch file: {_first_line(err)}"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_state_dict(obj: object) -> TypeGuard[Mapping[str, torch.Tensor]]:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def read_checkpoint(
    checkpoint: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], CheckpointMeta | None, dict[str, Any]]:
    """Read any supported checkpoint without running pickle code.

    Returns:
        ``(state_dict, meta, raw)``: the weights (``module.`` prefixes removed), our metadata
        (None for plain state_dicts and safetensors) and the whole loaded object (a dict;
        for our resume file it carries the optimizer and RNG states).

    Raises:
        CheckpointError: missing file, a file that would need pickle code execution, or
            contents that are not a state_dict.
    """
    path = Path(checkpoint)
    raw = _load_raw(path)
    meta = None
    if isinstance(raw, Mapping) and raw.get("format") == FORMAT:
        state = raw.get("state_dict")
        meta = CheckpointMeta.from_dict(raw.get("meta") or {}, source=f"checkpoint {str(path)!r}")
    elif isinstance(raw, Mapping) and "state_dict" in raw and _is_state_dict(raw["state_dict"]):
        state = raw["state_dict"]
    elif isinstance(raw, Mapping) and "model" in raw and _is_state_dict(raw["model"]):
        state = raw["model"]
    else:
        state = raw
    if not _is_state_dict(state):
        kind = type(state).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r}: expected a state_dict (names -> tensors), or one under "
            f"'state_dict' or 'model', got {kind}"
        )
    state = dict(state)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, meta, dict(raw) if isinstance(raw, Mapping) else {}


def read_metadata(checkpoint: str | os.PathLike[str]) -> CheckpointMeta | None:
    """Metadata of a checkpoint written by our trainer; None for a plain state_dict or safetensors.

    Raises:
        CheckpointError: as :func:`read_checkpoint`.
    """
    return read_checkpoint(checkpoint)[1]


def save_checkpoint(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    meta: CheckpointMeta,
    **extra: Any,
) -> Path:
    """Write our checkpoint atomically. ``extra`` (optimizer, RNG states ...) must be made of
    tensors, numbers, strings, lists and dicts, so that ``weights_only=True`` can load it."""
    path = Path(path)
    obj = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        "meta": meta.to_dict(),
        **extra,
    }
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
    return path
