"""Where the templates and case studies are: inside the wheel, or at the repository's top level."""

from __future__ import annotations

from pathlib import Path

__all__ = ["resource_dir"]

_PACKAGE = Path(__file__).resolve().parents[1]


def resource_dir(name: str) -> Path:
    """``resource_dir("templates")`` -> the folder, installed (wheel) or in a source checkout."""
    for candidate in (_PACKAGE / "_shipped" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bias_audit resource folder {name!r} not found beside {_PACKAGE}")
