"""The names shared by every layer: roles, result columns and group cells.

One concept, one name: a column is always ``<metric>:<region or role>``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["CAUSAL", "CONFOUNDER", "BACKGROUND", "ROLES", "column", "split_column", "cell_name"]

CAUSAL = "causal"
CONFOUNDER = "confounder"
BACKGROUND = "background"
#: Roles a region can play. ``background`` is everything outside all annotated regions.
ROLES: tuple[str, ...] = (CAUSAL, CONFOUNDER, BACKGROUND)

#: Separator between the attribute values and the label in a cell's name.
CELL_SEPARATOR = " / "


def column(metric: str, name: str) -> str:
    """Result column of ``metric`` over a region or role: ``"mass:hair"``."""
    return f"{metric}:{name}"


def split_column(name: str) -> tuple[str, str]:
    """Inverse of :func:`column`: ``"mass:hair" -> ("mass", "hair")``."""
    metric, sep, region = name.partition(":")
    if not sep:
        raise ValueError(f"not a metric column: {name!r}")
    return metric, region


def _escape(value: object) -> str:
    # A "/" inside a value is written \/ (and a backslash \\), so a "/" after a space is
    # always a separator: ("a / b", "c") and ("a", "b / c") get two different names.
    return str(value).replace("\\", "\\\\").replace("/", "\\/")


def cell_name(values: Iterable[object]) -> str:
    """Name of a group cell from its attribute values then its label: ``"female / doctor"``.

    The only place cell names are built. Distinct value tuples always get distinct names: a
    ``/`` or ``\\`` inside a value is escaped with a backslash (``"a/b"`` -> ``"a\\/b"``).
    """
    return CELL_SEPARATOR.join(_escape(v) for v in values)
