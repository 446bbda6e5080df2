"""The README's config table is the schema's: every key, and every plain default, as declared."""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, fields
from pathlib import Path

from bias_audit.core import config
from bias_audit.core.config import AuditConfig

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = {
    "data": config.DataConfig, "regions": config.RegionsConfig, "explain": config.ExplainConfig,
    "models": config.ModelConfig, "stats": config.StatsConfig,
    "interventions": config.InterventionsConfig, "report": config.ReportConfig,
    "output": config.OutputConfig, "run": config.RunConfig,
}  # fmt: skip
ROW = re.compile(r"^\| `(\[\[?\w+\]?\]) (\w+)` \| ([^|]*) \|", re.M)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


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
        elif default is not None:
            assert cell == f"`{_toml(default)}`", (sec, key, cell, default)
