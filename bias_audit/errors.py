"""Errors raised by bias_audit.

Every error a user can cause is a :class:`BiasAuditError`. Its message names the culprit
(file, row, column, key or argument) and fits on one line; the CLI prints it as
``error: <message>`` and exits with code 2, without a traceback.
"""

from __future__ import annotations

__all__ = [
    "BiasAuditError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExplainError",
    "ModelError",
    "RunError",
]


class BiasAuditError(Exception):
    """Base class of every user-facing error."""


class DataError(BiasAuditError, ValueError):
    """A manifest, image, mask or annotation is missing or malformed."""


class ConfigError(BiasAuditError, ValueError):
    """A configuration key or argument is unknown or has a bad value."""


class ModelError(BiasAuditError):
    """A model cannot be built, loaded or used as asked."""


class CheckpointError(ModelError):
    """A checkpoint is unsafe (needs pickle code), unreadable, or does not fit the model."""


class ExplainError(BiasAuditError, ValueError):
    """``explain`` was asked for something the model or its inputs cannot give."""


class RunError(BiasAuditError):
    """An audit run cannot start or resume: an existing output folder, a mismatched resume."""
