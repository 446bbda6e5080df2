"""Models: build classifiers by name, load checkpoints safely, train biased and debiased ones."""

from __future__ import annotations

from ._build import SmallCNN, build_model, list_archs
from ._checkpoint import FORMAT, CheckpointMeta, read_checkpoint, read_metadata, save_checkpoint
from ._load import load_model, load_state_dict_strict

__all__ = [
    "FORMAT",
    "CheckpointMeta",
    "SmallCNN",
    "build_model",
    "list_archs",
    "load_model",
    "load_state_dict_strict",
    "read_checkpoint",
    "read_metadata",
    "save_checkpoint",
]
