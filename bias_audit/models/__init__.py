"""Models: build classifiers by name, load checkpoints safely, train biased and debiased ones.

model = load_model("resnet18", checkpoint="biased.pt", num_classes=2)
model = load_model(checkpoint="runs/biased/model.pt")    # our trainer's checkpoint
result = train_classifier(TrainConfig(train_manifest="train.csv", strategy="group_dro"))
"""

from __future__ import annotations

from ._build import SmallCNN, build_model, list_archs
from ._checkpoint import FORMAT, CheckpointMeta, read_checkpoint, read_metadata, save_checkpoint
from ._load import checkpoint_arch, load_model, load_state_dict_strict
from ._penalty import find_target_layer, gradcam_evidence_mass, gradcam_mass, input_grad_energy
from ._strategies import STRATEGIES
from ._train import TrainConfig, TrainResult, train_classifier

__all__ = [
    "FORMAT",
    "STRATEGIES",
    "CheckpointMeta",
    "SmallCNN",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "checkpoint_arch",
    "find_target_layer",
    "gradcam_evidence_mass",
    "gradcam_mass",
    "input_grad_energy",
    "list_archs",
    "load_model",
    "load_state_dict_strict",
    "read_checkpoint",
    "read_metadata",
    "save_checkpoint",
    "train_classifier",
]
