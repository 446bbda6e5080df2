"""Training strategies (ERM, balanced, Group DRO, attention penalties): pure tensor code."""

from __future__ import annotations

from bias_audit.core.training._penalty import (
    gradcam_evidence_mass,
    gradcam_mass,
    input_grad_energy,
)
from bias_audit.core.training._strategies import STRATEGIES

__all__ = [
    "STRATEGIES",
    "gradcam_evidence_mass",
    "gradcam_mass",
    "input_grad_energy",
]
