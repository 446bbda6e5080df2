"""Training strategies: one small loss function each, in a registry.

Every loss takes a :class:`Step` and returns ``(loss, logits)``. ``balanced`` differs from
``erm`` only in how the trainer samples (see ``BALANCED_SAMPLING``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bias_audit.core.training._penalty import gradcam_evidence_mass, gradcam_mass, input_grad_energy
from bias_audit.errors import ConfigError

__all__ = ["BALANCED_SAMPLING", "STRATEGIES", "Step", "cell_sampling_weights", "cell_loss_weights"]


@dataclass(frozen=True)
class Step:
    """One batch as the strategies see it.

    Attributes:
        model: in training mode.
        images: (N,3,S,S). labels: (N,) long. cells: (N,) long, index of each image's
            group x label cell among ``n_cells``.
        confounder: (N,S,S) bool, union of the confounder regions (all False if none given).
        state: the strategy's mutable state (persisted in the resume file): tensors only.
        config: the TrainConfig.
        target_layer: dotted name for the Grad-CAM penalty.
        target_reshape: turns that layer's output into (N, C, h, w) (ViT, Swin), or None.
    """

    model: nn.Module
    images: Tensor
    labels: Tensor
    cells: Tensor
    n_cells: int
    confounder: Tensor
    state: dict[str, Tensor]
    config: Any
    target_layer: str | None
    target_reshape: Callable[[Tensor], Tensor] | None = None


def cell_sampling_weights(cells: Tensor, n_cells: int) -> Tensor:
    """Per-sample weights 1/n_cell, so that every non-empty cell is drawn equally often.
    cells (N,) long -> (N,) float64."""
    counts = torch.bincount(cells, minlength=n_cells).double()
    return 1.0 / counts[cells]


def cell_loss_weights(cells: Tensor, n_cells: int) -> Tensor:
    """Per-cell loss weights ∝ 1/frequency, scaled so the average weight over the training
    samples is 1 (the loss keeps ERM's scale). (n_cells,) float32; 0 for empty cells."""
    counts = torch.bincount(cells, minlength=n_cells).double()
    w = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    w = w * len(cells) / (w[cells].sum())
    return w.float()


def _erm(step: Step) -> tuple[Tensor, Tensor]:
    logits = step.model(step.images)
    return F.cross_entropy(logits, step.labels), logits


def _reweight(step: Step) -> tuple[Tensor, Tensor]:
    logits = step.model(step.images)
    w = step.state["cell_weights"].to(logits.device)[step.cells]
    losses = F.cross_entropy(logits, step.labels, reduction="none")
    return (w * losses).mean(), logits


def _group_dro(step: Step) -> tuple[Tensor, Tensor]:
    # Sagawa et al., online: exponentiated-gradient ascent on the group weights q, then the
    # q-weighted sum of the per-group mean losses. Groups absent from the batch keep their q.
    logits = step.model(step.images)
    losses = F.cross_entropy(logits, step.labels, reduction="none")
    one_hot = F.one_hot(step.cells, step.n_cells).to(losses.dtype)  # (N,G)
    counts = one_hot.sum(0)
    group_loss = (one_hot * losses[:, None]).sum(0) / counts.clamp(min=1)
    q = step.state["q"].to(losses.device)
    q = q * torch.exp(step.config.dro_eta * group_loss.detach())
    q = q / q.sum()
    step.state["q"] = q.detach().cpu()
    return (q * group_loss).sum(), logits


def _penalty_layer(step: Step) -> str:
    if step.target_layer is None:
        raise ConfigError("target_layer: the Grad-CAM penalty needs a layer name, got None")
    return step.target_layer


def _attention_penalty(step: Step) -> tuple[Tensor, Tensor]:
    cfg = step.config
    present = step.confounder.flatten(1).any(1)
    if cfg.penalty == "gradcam" and cfg.penalty_map == "evidence":
        logits, per_image = gradcam_evidence_mass(
            step.model,
            step.images,
            step.confounder,
            target_layer=_penalty_layer(step),
            window=cfg.penalty_window,
            reshape=step.target_reshape,
        )
    elif cfg.penalty == "gradcam":
        logits, per_image = gradcam_mass(
            step.model,
            step.images,
            step.labels,
            step.confounder,
            target_layer=_penalty_layer(step),
            window=cfg.penalty_window,
            reshape=step.target_reshape,
        )
    else:
        logits, per_image = input_grad_energy(step.model, step.images, step.confounder)
    ce = F.cross_entropy(logits, step.labels)
    # Images without a confounder region carry no constraint; they do not dilute the mean.
    penalty = (per_image * present).sum() / present.sum().clamp(min=1)
    return ce + cfg.penalty_weight * penalty, logits


def _mask_confounders(step: Step) -> tuple[Tensor, Tensor]:
    # Not an attention penalty: the confounder pixels are set to 0, the normalised dataset
    # mean, before the forward pass, so the model never sees them. It edits the input, so it
    # is a strategy of its own; attention_penalty stays "cross-entropy + λ x attention".
    logits = step.model(step.images * ~step.confounder[:, None])
    return F.cross_entropy(logits, step.labels), logits


STRATEGIES: dict[str, Callable[[Step], tuple[Tensor, Tensor]]] = {
    "erm": _erm,
    "balanced": _erm,
    "reweight": _reweight,
    "group_dro": _group_dro,
    "attention_penalty": _attention_penalty,
    "mask_confounders": _mask_confounders,
}

#: Strategies whose epochs are drawn with cell-balanced sampling instead of a permutation.
BALANCED_SAMPLING = frozenset({"balanced"})


def initial_state(strategy: str, cells: Tensor, n_cells: int) -> dict[str, Tensor]:
    """The strategy's state before the first step."""
    if strategy == "reweight":
        return {"cell_weights": cell_loss_weights(cells, n_cells)}
    if strategy == "group_dro":
        return {"q": torch.full((n_cells,), 1.0 / n_cells)}
    return {}
