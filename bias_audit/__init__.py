"""bias-audit: audit image classifiers for dataset bias.

The entry points, one per job::

    from bias_audit import explain, load_manifest, load_model, train_classifier, audit

Names are imported lazily so that ``import bias_audit`` stays cheap (no torch, plotly or jinja2
until a verb is used). No subpackage shares its name with a verb, so ``bias_audit.audit`` is the
function whatever was imported before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bias_audit.core._version import VERSION
from bias_audit.errors import (
    BiasAuditError,
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    RunError,
)

__version__ = VERSION

# public name -> module that defines it
_LAZY = {
    "explain": "bias_audit.core.maps",
    "Explanation": "bias_audit.core.maps",
    "normalize_maps": "bias_audit.core.maps",
    "overlay": "bias_audit.core.maps",
    "load_manifest": "bias_audit.io.data",
    "AuditDataset": "bias_audit.io.data",
    "load_model": "bias_audit.io.checkpoints",
    "read_metadata": "bias_audit.io.checkpoints",
    "build_model": "bias_audit.core.architectures",
    "train_classifier": "bias_audit.pipelines",
    "TrainConfig": "bias_audit.pipelines",
    "audit": "bias_audit.pipelines",
    "AuditConfig": "bias_audit.core.config",
    "AuditResult": "bias_audit.pipelines",
    "check_run": "bias_audit.pipelines",
    "compare_runs": "bias_audit.pipelines",
    "render_report": "bias_audit.report",
}

__all__ = [
    "BiasAuditError",
    "CheckpointError",
    "ConfigError",
    "DataError",
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
    from bias_audit.core.architectures import build_model as build_model
    from bias_audit.core.config import AuditConfig as AuditConfig
    from bias_audit.core.maps import Explanation as Explanation
    from bias_audit.core.maps import explain as explain
    from bias_audit.core.maps import normalize_maps as normalize_maps
    from bias_audit.core.maps import overlay as overlay
    from bias_audit.io.checkpoints import load_model as load_model
    from bias_audit.io.checkpoints import read_metadata as read_metadata
    from bias_audit.io.data import AuditDataset as AuditDataset
    from bias_audit.io.data import load_manifest as load_manifest
    from bias_audit.pipelines import AuditResult as AuditResult
    from bias_audit.pipelines import TrainConfig as TrainConfig
    from bias_audit.pipelines import audit as audit
    from bias_audit.pipelines import check_run as check_run
    from bias_audit.pipelines import compare_runs as compare_runs
    from bias_audit.pipelines import train_classifier as train_classifier
    from bias_audit.report import render_report as render_report
