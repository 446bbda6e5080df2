"""bias-audit: audit image classifiers for dataset bias.

The entry points, one per job::

    from bias_audit import explain, load_manifest, load_model, train_classifier, audit

Names are imported lazily so that ``import bias_audit`` stays cheap (no plotly, no jinja2).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    BiasAuditError,
    CheckpointError,
    ConfigError,
    DataError,
    ExplainError,
    ModelError,
    RunError,
)

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "explain": "bias_audit.explain",
    "Explanation": "bias_audit.explain",
    "normalize_maps": "bias_audit.explain",
    "overlay": "bias_audit.explain",
    "load_manifest": "bias_audit.data",
    "AuditDataset": "bias_audit.data",
    "load_model": "bias_audit.models",
    "read_metadata": "bias_audit.models",
    "build_model": "bias_audit.models",
    "train_classifier": "bias_audit.models",
    "TrainConfig": "bias_audit.models",
    "audit": "bias_audit.audit",
    "AuditConfig": "bias_audit.audit",
    "AuditResult": "bias_audit.audit",
    "render_report": "bias_audit.report",
}

__all__ = [
    "BiasAuditError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExplainError",
    "ModelError",
    "RunError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bias_audit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from .audit import AuditConfig as AuditConfig
    from .audit import AuditResult as AuditResult
    from .audit import audit as audit
    from .data import AuditDataset as AuditDataset
    from .data import load_manifest as load_manifest
    from .explain import Explanation as Explanation
    from .explain import explain as explain
    from .explain import normalize_maps as normalize_maps
    from .explain import overlay as overlay
    from .models import TrainConfig as TrainConfig
    from .models import load_model as load_model
    from .models import train_classifier as train_classifier
    from .report import render_report as render_report
