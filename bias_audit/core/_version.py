"""The package's version, read once from its installed metadata (pyproject.toml is the source)."""

from __future__ import annotations

from importlib import metadata

__all__ = ["VERSION"]

try:
    VERSION = metadata.version("bias-audit")
except metadata.PackageNotFoundError:  # pragma: no cover - a source tree never installed
    VERSION = "0+unknown"
