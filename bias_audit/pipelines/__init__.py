"""The jobs: train, audit (one config in, one run folder out), check and compare.

Thin compositions of :mod:`bias_audit.core` (pure computation) and :mod:`bias_audit.io` (files).
"""

from __future__ import annotations

from bias_audit.pipelines._audit import AuditResult, audit
from bias_audit.pipelines._check import Criterion, check_run
from bias_audit.pipelines._compare import compare_runs
from bias_audit.pipelines._step import StepSpec, audit_batch
from bias_audit.pipelines._train import TrainConfig, TrainResult, train_classifier

__all__ = [
    "AuditResult",
    "Criterion",
    "StepSpec",
    "TrainConfig",
    "TrainResult",
    "audit",
    "audit_batch",
    "check_run",
    "compare_runs",
    "train_classifier",
]
