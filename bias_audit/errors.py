"""Errors raised by bias_audit.

One hierarchy on one axis, the input at fault: a setting or argument (:class:`ConfigError`),
a data file or tensor (:class:`DataError`), the model or its checkpoint (:class:`ModelError`,
:class:`CheckpointError`), or the run folder (:class:`RunError`). Every error a user can cause
is a :class:`BiasAuditError`. Its message names the culprit
(file, row, column, key or argument) and fits on one line; the CLI prints it as
``error: <message>`` and exits with code 2, without a traceback.
"""

from __future__ import annotations

__all__ = [
    "BiasAuditError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelError",
    "RunError",
]


class BiasAuditError(Exception):
    """Base class of every user-facing error."""


class DataError(BiasAuditError, ValueError):
    """A manifest, image, mask, annotation or input tensor is missing or malformed."""


class ConfigError(BiasAuditError, ValueError):
    """A configuration key or function argument is unknown or has a bad value."""


class ModelError(BiasAuditError):
    """A model cannot be built, loaded or explained as asked (its structure or outputs)."""


class CheckpointError(ModelError):
    """A checkpoint is unsafe (needs pickle code), unreadable, or does not fit the model."""


class RunError(BiasAuditError):
    """An audit run cannot start or resume: an existing output folder, a mismatched resume."""
