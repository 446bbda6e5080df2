"""The audit: one config in, one run folder out (samples, statistics, findings, report)."""

from ._check import Criterion, check_run
from ._compare import compare_runs
from ._config import (
    AuditConfig,
    DataConfig,
    ExplainConfig,
    InterventionsConfig,
    ModelConfig,
    OutputConfig,
    RegionsConfig,
    ReportConfig,
    StatsConfig,
)
from ._findings import ALPHA, THRESHOLDS
from ._run import AuditResult, audit
from ._step import StepSpec, audit_batch

__all__ = [
    "ALPHA",
    "AuditConfig",
    "AuditResult",
    "StepSpec",
    "audit",
    "audit_batch",
    "compare_runs",
    "Criterion",
    "DataConfig",
    "ExplainConfig",
    "InterventionsConfig",
    "ModelConfig",
    "OutputConfig",
    "RegionsConfig",
    "ReportConfig",
    "StatsConfig",
    "THRESHOLDS",
    "check_run",
]
