"""The README's config table is the schema's: every key, and every plain default, as declared."""

from __future__ import annotations

import re
import tomllib
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from bias_audit.core import config
from bias_audit.core.config import AuditConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def _sections() -> dict[str, type]:
    """AuditConfig's tables, read off its fields: a new section cannot be left out here."""
    hints = typing.get_type_hints(AuditConfig)
    out = {}
    for f in fields(AuditConfig):
        hint = hints[f.name]
        table = typing.get_args(hint)[0] if f.name == "models" else hint
        if isinstance(table, type) and issubclass(table, config._Section):
            out[f.name] = table
    return out


SECTIONS = _sections()
ROW = re.compile(r"^\| `(\[\[?\w+\]?\]) (\w+)` \| ([^|]*) \|", re.M)


def _schema() -> dict[str, dict[str, object]]:
    """``{"[data]": {"manifest": MISSING, "label": "label", ...}, "[[models]]": {...}, ...}``."""
    out: dict[str, dict[str, object]] = {}
    for f in fields(AuditConfig):
        table = SECTIONS.get(f.name)
        if table is not None:
            key = "[[models]]" if f.name == "models" else f"[{f.name}]"
            out[key] = {g.name: g.default for g in fields(table) if "rule" in g.metadata}
    return out


def test_readme_lists_every_config_key_and_its_default():
    rows = {(sec, key): default.strip() for sec, key, default in ROW.findall(README.read_text())}
    schema = _schema()
    documented = {(sec, key) for sec, key in rows if sec in schema}
    declared = {(sec, key) for sec, keys in schema.items() for key in keys}
    assert documented == declared, (
        f"missing in README: {sorted(declared - documented)}; "
        f"not in the schema: {sorted(documented - declared)}"
    )
    for (sec, key), cell in rows.items():
        if sec not in schema:
            continue
        default = schema[sec][key]
        if default is MISSING:
            assert cell == "required", (sec, key, cell)
        elif re.fullmatch(r"`\[\w+\] \w+`", cell):
            # "the value of that other key": only for an empty default that means exactly that
            assert default in (None, ()), (sec, key, cell, default)
        elif default is not None:
            assert cell.startswith("`") and cell.endswith("`"), (sec, key, cell)
            written = tomllib.loads(f"v = {cell[1:-1]}")["v"]
            expected = list(default) if isinstance(default, tuple) else default
            assert (
                written == expected
                and type(written) is type(expected)
                or (isinstance(default, float) and written == default)
            ), (sec, key, cell, default)
