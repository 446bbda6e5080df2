"""The run folder: atomic writes, refusal to overwrite, and resume state.

Per batch, the rows go to ``progress/<model>/part-<batch:06d>.parquet`` (atomic), then
``progress/state.json`` records the batch as done (atomic). A kill between the two writes only
means the batch is recomputed and its part replaced, so a resumed run never duplicates rows.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from bias_audit.errors import ConfigError, RunError
from bias_audit.io._files import atomic_write, write_json, write_text

__all__ = ["RunStore", "RUN_FILES", "read_table"]

#: Everything ``audit`` writes in a run folder; ``--force`` removes exactly these.
RUN_FILES = (
    "config.toml",
    "samples.parquet",
    "groups.parquet",
    "gaps.parquet",
    "fairness.parquet",
    "comparisons.parquet",
    "skipped.parquet",
    "maps.npz",
    "gallery.json",
    "summary.json",
    "report.html",
    "progress",
)
STATE = "state.json"
#: Keys a resume must match; anything else in the state is bookkeeping.
_KEY_FIELDS = ("config_hash", "fingerprint", "batch_size", "models")


def read_table(path: Path) -> pd.DataFrame:
    """Read a parquet table of a run folder, naming the file when it is missing or broken."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError as err:
        raise RunError(f"{path}: not found; is this a finished run folder?") from err
    except Exception as err:  # pyarrow raises several unrelated types for a corrupt file
        raise RunError(f"{path}: cannot read the table: {err}") from err


def read_summary(run_dir: Path) -> dict[str, Any]:
    """Read ``summary.json`` of a run folder, naming the file when it is missing or broken."""
    path = run_dir / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise RunError(f"{path}: not found; is this a finished run folder?") from err
    except (OSError, ValueError) as err:
        raise RunError(f"{path}: unreadable: {err}") from err


class RunStore:
    """One run folder. ``open`` decides between a fresh start, an overwrite and a resume."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.progress = self.run_dir / "progress"
        self._state: dict[str, Any] = {}

    # -- starting -------------------------------------------------------------------------
    def open(self, key: Mapping[str, Any], *, resume: bool = False, force: bool = False) -> bool:
        """Prepare the folder for a run identified by ``key``.

        Returns True when resuming (completed batches are kept), False for a fresh start.
        Raises RunError when the folder holds something and neither ``force`` nor a matching
        ``resume`` allows going on.
        """
        if resume and force:
            raise ConfigError(
                "--resume and --force exclude each other: resume keeps, force deletes"
            )
        key = {k: key[k] for k in _KEY_FIELDS}
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunError(f"{self.run_dir}: output path exists and is not a folder")
        busy = self.run_dir.is_dir() and any(self.run_dir.iterdir())
        if resume:
            state_path = self.progress / STATE
            if not state_path.is_file():
                raise RunError(f"{self.run_dir}: nothing to resume (no progress/{STATE})")
            try:
                state = json.loads(state_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise RunError(f"{state_path}: unreadable resume state: {err}") from err
            for field in _KEY_FIELDS:
                if state.get(field) != json.loads(json.dumps(key[field])):
                    raise RunError(
                        f"{self.run_dir}: cannot resume: {_WHAT[field]} changed since the run "
                        f"started ({field}); use --force to start over"
                    )
            self._state = state
            return True
        if busy and not force:
            raise RunError(
                f"{self.run_dir}: output folder exists and is not empty; "
                "pass --force to overwrite it or --resume to continue it"
            )
        if busy:
            self._clear()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._state = {**json.loads(json.dumps(key)), "completed": {}, "finished": False}
        self._save_state()
        return False

    def _clear(self) -> None:
        # Only what a run writes: a mistyped --out must not wipe someone's unrelated files.
        for name in RUN_FILES:
            path = self.run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def _save_state(self) -> None:
        write_json(self.progress / STATE, self._state)

    # -- batches ---------------------------------------------------------------------------
    def completed(self, model: str) -> set[int]:
        """Batches of ``model`` whose rows are safely on disk."""
        return set(self._state.get("completed", {}).get(model, []))

    def part_path(self, model: str, batch: int) -> Path:
        return self.progress / model / f"part-{batch:06d}.parquet"

    def write_part(self, model: str, batch: int, rows: pd.DataFrame) -> None:
        """Store one batch's rows, then record the batch as done (in that order)."""
        with atomic_write(self.part_path(model, batch), "wb") as fh:
            rows.to_parquet(fh, index=False)
        done = self._state.setdefault("completed", {}).setdefault(model, [])
        if batch not in done:
            done.append(batch)
            done.sort()
        self._save_state()

    def collect(self, model: str, n_batches: int) -> pd.DataFrame:
        """All rows of ``model`` in batch order. Raises RunError if a batch is missing."""
        missing = sorted(set(range(n_batches)) - self.completed(model))
        if missing:
            raise RunError(f"{self.progress / model}: batches {missing[:5]} are not done")
        parts = [read_table(self.part_path(model, b)) for b in range(n_batches)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def set_info(self, **info: Any) -> None:
        """Bookkeeping beside the resume key (e.g. timings so far); saved atomically."""
        self._state.update(json.loads(json.dumps(info, default=str)))
        self._save_state()

    def info(self, name: str, default: Any = None) -> Any:
        return self._state.get(name, default)

    # -- final files -----------------------------------------------------------------------
    def write_table(self, name: str, table: pd.DataFrame) -> Path:
        path = self.run_dir / name
        with atomic_write(path, "wb") as fh:
            table.to_parquet(fh, index=False)
        return path

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.run_dir / name
        write_json(path, obj)
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.run_dir / name
        write_text(path, text)
        return path

    def write_npz(self, name: str, arrays: Mapping[str, Any]) -> Path:
        import numpy as np

        path = self.run_dir / name
        with atomic_write(path, "wb") as fh:
            np.savez_compressed(fh, **dict(arrays))
        return path

    def finish(self) -> None:
        self._state["finished"] = True
        self._save_state()


_WHAT = {
    "config_hash": "the config",
    "fingerprint": "the dataset",
    "batch_size": "the batch size",
    "models": "a model checkpoint",
}
