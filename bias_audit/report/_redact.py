"""Paths in a report meant to be sent: shown relative to the config's folder, or dropped.

The audit writes absolute paths (manifest, checkpoints, skipped files). A report is e-mailed,
so the machine's layout should not travel with it: by default every path under the config's
folder is shown relative to it; with ``redact`` every path and the config's comments go.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import pandas as pd

__all__ = ["PathPolicy", "config_dir", "strip_comments", "REDACTED"]

REDACTED = "[redacted]"

# An absolute POSIX path of two or more parts, a home-relative one, or a Windows one. The
# look-behind keeps "male / nurse", "1/2" and URLs' "://" out.
_ABSOLUTE = re.compile(
    r"(?<![\w.:/\\])(?:~|/[\w.@+%-]+)(?:/[\w.@+%-]*)+"
    r"|(?<![\w])[A-Za-z]:\\(?:[^\s\"'<>|\\]+\\?)+"
)
# Config keys whose string values are paths whatever they look like.
_PATH_KEY = re.compile(r"(manifest|checkpoint|dir|path|root|out|file)s?$", re.I)


def config_dir(summary: Mapping[str, Any], config_text: str) -> Path | None:
    """The folder of the run's config, or None when it cannot be told.

    ``summary["config_dir"]`` when the audit records it; otherwise the absolute manifest path
    in the summary minus the (relative) manifest path written in the config, which is how the
    config resolved it.
    """
    recorded = summary.get("config_dir")
    if isinstance(recorded, str) and recorded:
        return Path(recorded)
    manifest = (summary.get("data") or {}).get("manifest")
    try:
        written = tomllib.loads(config_text).get("data", {}).get("manifest")
    except tomllib.TOMLDecodeError:
        return None
    if not isinstance(manifest, str) or not isinstance(written, str):
        return None
    absolute, relative = PurePath(manifest), PurePath(written)
    if relative.is_absolute() or not absolute.is_absolute():
        return None
    n = len(relative.parts)
    if tuple(absolute.parts[-n:]) != tuple(p for p in relative.parts if p != "."):
        return None
    return Path(*absolute.parts[:-n])


def strip_comments(text: str) -> str:
    """The TOML ``text`` without comments (a ``#`` inside a string is kept)."""
    out = []
    for line in text.splitlines():
        quote, i, cut = "", 0, len(line)
        while i < len(line):
            ch = line[i]
            if quote:
                if ch == "\\" and quote == '"':
                    i += 1
                elif ch == quote:
                    quote = ""
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                cut = i
                break
            i += 1
        kept = line[:cut].rstrip()
        if kept or not line.strip().startswith("#"):
            out.append(kept)
    return "\n".join(out).strip("\n") + "\n"


def _redact_config(text: str) -> str:
    """Comments dropped; string values of path keys, and any string with a separator,
    replaced."""
    lines = []
    for line in strip_comments(text).splitlines():
        key, sep, value = line.partition("=")
        if sep and _PATH_KEY.search(key.strip().strip('"')):
            value = re.sub(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', f'"{REDACTED}"', value)
        else:
            value = re.sub(
                r'"(?:[^"\\]|\\.)*[/\\](?:[^"\\]|\\.)*"|\'[^\']*[/\\][^\']*\'',
                f'"{REDACTED}"',
                value,
            )
        lines.append(key + sep + value if sep else line)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PathPolicy:
    """How paths reach the report: relative to ``base`` (when known), or not at all."""

    base: Path | None
    redact: bool
    #: Absolute folders whose every occurrence is replaced (besides the pattern above).
    roots: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, summary: Mapping[str, Any], config_text: str, run_dir: Path, *, redact: bool
    ) -> PathPolicy:
        base = config_dir(summary, config_text)
        roots = {str(run_dir.resolve()), str(Path.cwd()), str(Path.home())}
        if base is not None:
            roots.add(str(base))
        # Longest first, so a folder inside another is replaced whole.
        return cls(base, redact, tuple(sorted((r for r in roots if r != "/"), key=len)[::-1]))

    def path(self, value: Any) -> str | None:
        """A path field (manifest, checkpoint): relative to the config's folder, or dropped."""
        if value is None:
            return None
        if self.redact:
            return REDACTED
        text = str(value)
        if self.base is not None and os.path.isabs(text):
            try:
                return os.path.relpath(text, self.base)
            except ValueError:  # another drive on Windows
                return text
        return text

    def text(self, value: str) -> str:
        """Free text (a warning, a finding, a table cell): paths inside made relative or
        dropped."""
        if not value:
            return value
        if not self.redact:
            if self.base is None:
                return value
            prefix = str(self.base).rstrip(os.sep) + os.sep
            return value.replace(prefix, "")
        for root in self.roots:
            value = re.sub(re.escape(root) + r"(?:[/\\][\w.@+%-]*)*", REDACTED, value)
        return _ABSOLUTE.sub(REDACTED, value)

    def config(self, text: str) -> str:
        return _redact_config(text) if self.redact else text

    def obj(self, value: Any) -> Any:
        """Every string inside ``value`` (dicts, lists) through :meth:`text`."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.obj(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.obj(v) for v in value]
        return value

    def frame(self, frame: pd.DataFrame | None) -> pd.DataFrame | None:
        if frame is None:
            return None
        out = frame.copy()
        for col in out.columns:
            if not pd.api.types.is_numeric_dtype(out[col]):
                out[col] = out[col].map(lambda v: self.text(v) if isinstance(v, str) else v)
        return out
