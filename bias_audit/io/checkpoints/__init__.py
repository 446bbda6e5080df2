"""Checkpoints: read them safely (never running pickle code), write ours atomically, load models.

model = load_model("resnet18", checkpoint="biased.pt", num_classes=2)
model = load_model(checkpoint="runs/biased/model.pt")    # our trainer's checkpoint
"""

from __future__ import annotations

from bias_audit.io.checkpoints._checkpoint import (
    FORMAT,
    CheckpointMeta,
    read_checkpoint,
    read_metadata,
    save_checkpoint,
)
from bias_audit.io.checkpoints._load import checkpoint_arch, load_model, load_state_dict_strict

__all__ = [
    "FORMAT",
    "CheckpointMeta",
    "checkpoint_arch",
    "load_model",
    "load_state_dict_strict",
    "read_checkpoint",
    "read_metadata",
    "save_checkpoint",
]
