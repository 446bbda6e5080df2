"""The audit: one config in, one run folder out (samples, statistics, findings, report)."""

from ._check import Criterion, check_run
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

__all__ = [
    "ALPHA",
    "AuditConfig",
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
