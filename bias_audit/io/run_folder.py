"""The run folder: atomic writes, refusal to overwrite, and resume state.

Per batch, the rows go to ``progress/<model>/part-<batch:06d>.parquet`` (atomic), then a line
appended to ``progress/<model>/parts.jsonl`` records the batch as done, with the part's SHA-256
and the SHA-256 of its row ids. A kill between the two writes only means the batch is recomputed
and its part replaced, so a resumed run never duplicates rows; a kill in the middle of the
append leaves a torn last line, which the resume drops. The journal is appended, not rewritten,
so recording a batch costs the same at the 3,000th batch as at the first (rewriting one JSON
file of every batch made it grow with the run). ``progress/state.json`` keeps the resume key
and the bookkeeping. On resume every recorded part is checked (its bytes, its batch's ids); a
part that fails is recomputed rather than trusted.

A run folder is marked by ``.bias-audit-run`` (written when the run starts): ``force`` replaces
only a marked folder, and removes only the files a run writes. While a run is going it holds an
exclusive ``flock`` on ``.bias-audit-lock`` (with its pid inside), so a second run into the same
folder is refused instead of mixing rows or wiping the first one's progress.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bias_audit.errors import ConfigError, RunError
from bias_audit.io._files import atomic_write, write_json, write_text

__all__ = ["RunStore", "RUN_FILES", "read_table"]

#: Everything ``audit`` writes in a run folder; ``force=True`` removes exactly these.
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
#: Marks a folder as a run folder: ``force`` never clears a folder without it.
MARKER = ".bias-audit-run"
#: Held (``flock``) for the whole run; never deleted, so every run locks the same file.
LOCK = ".bias-audit-lock"
#: Per model, the completed batches, one JSON line each.
JOURNAL = "parts.jsonl"
_PART_RE = re.compile(
    r"part-\d{6}\.parquet|\.part-\d{6}\.parquet\..*\.tmp|parts\.jsonl|\.parts\.jsonl\..*\.tmp"
)
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
        # model -> batch -> {"batch", "n", "ids_sha256", "sha256"}: the journals, in memory
        self._parts: dict[str, dict[int, dict[str, Any]]] = {}
        self._lock_fd: int | None = None

    # -- starting -------------------------------------------------------------------------
    def open(self, key: Mapping[str, Any], *, resume: bool = False, force: bool = False) -> bool:
        """Prepare the folder for a run identified by ``key``.

        Returns True when resuming (completed batches are kept), False for a fresh start.
        Raises RunError when the folder holds something and neither ``force`` nor a matching
        ``resume`` allows going on.
        """
        if resume and force:
            raise ConfigError(
                "resume=True and force=True exclude each other: resume keeps, force deletes"
            )
        key = {k: key[k] for k in _KEY_FIELDS}
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunError(f"{self.run_dir}: output path exists and is not a folder")
        if resume and not (self.progress / STATE).is_file():
            raise RunError(f"{self.run_dir}: nothing to resume (no progress/{STATE})")
        # A busy folder that is not a run folder is refused before the lock file is created
        # in it; every other decision is taken again under the lock, where nothing can change.
        if not resume and self._busy() and not self._is_marked():
            self._refuse_busy(force)
        self._acquire_lock()
        try:
            busy = self._busy()
            if busy and not resume and not (force and self._is_marked()):
                self._refuse_busy(force)
            return self._open_locked(key, resume=resume, busy=busy)
        except BaseException:
            self.close()
            raise

    def _busy(self) -> bool:
        return self.run_dir.is_dir() and any(p.name != LOCK for p in self.run_dir.iterdir())

    def _refuse_busy(self, force: bool) -> None:
        if force:
            raise RunError(
                f"{self.run_dir}: not a run folder (no {MARKER} marker), so force will not "
                "delete anything in it; choose an empty or new output folder"
            )
        raise RunError(
            f"{self.run_dir}: output folder exists and is not empty; "
            "pass force=True to overwrite it or resume=True to continue it"
        )

    def _open_locked(self, key: dict[str, Any], *, resume: bool, busy: bool) -> bool:
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
                        f"started ({field}); pass force=True to start over"
                    )
            self._state = state
            self._parts = self._load_journals()
            self._write_marker()
            return True
        if busy:
            self._clear()
        self._write_marker()
        self._state = {**json.loads(json.dumps(key)), "finished": False}
        self._parts = {}
        self._save_state()
        return False

    def close(self) -> None:
        """Release the folder's lock (also done by the OS when the process ends)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _acquire_lock(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Digits only: the file is in a folder anyone may have written to.
            holder = "".join(c for c in os.read(fd, 32).decode("ascii", "replace") if c.isdigit())
            holder = holder or "unknown"
            os.close(fd)
            raise RunError(
                f"{self.run_dir}: in use by another running audit (pid {holder}, lock "
                f"{LOCK}); wait for it to finish or choose another output folder"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _is_marked(self) -> bool:
        try:
            marker = json.loads((self.run_dir / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(marker, dict) and marker.get("tool") == "bias-audit"

    def _write_marker(self) -> None:
        if not self._is_marked():
            write_json(self.run_dir / MARKER, {"tool": "bias-audit", "format": 1})

    def _clear(self) -> None:
        # Only what a run writes: files of other origin, also inside progress/, stay.
        for name in RUN_FILES:
            path = self.run_dir / name
            if name == "progress":
                self._clear_progress()
            elif path.is_file() or path.is_symlink():
                path.unlink()

    def _clear_progress(self) -> None:
        if not self.progress.is_dir():
            return
        with contextlib.suppress(FileNotFoundError):
            (self.progress / STATE).unlink()
        for sub in self.progress.iterdir():
            if not sub.is_dir() or sub.is_symlink():
                continue
            for f in sub.iterdir():
                if f.is_file() and _PART_RE.fullmatch(f.name):
                    f.unlink()
            with contextlib.suppress(OSError):
                sub.rmdir()  # only if nothing else is left in it
        with contextlib.suppress(OSError):
            self.progress.rmdir()

    def _save_state(self) -> None:
        write_json(self.progress / STATE, self._state)

    # -- batches ---------------------------------------------------------------------------
    def completed(self, model: str) -> set[int]:
        """Batches of ``model`` whose rows are safely on disk."""
        return set(self._parts.get(model, {}))

    def journal_path(self, model: str) -> Path:
        return self.progress / model / JOURNAL

    def _load_journals(self) -> dict[str, dict[int, dict[str, Any]]]:
        """Every model's journal; a torn last line (a kill in the middle of an append) is cut
        off the file, so the next append starts on a line of its own."""
        parts: dict[str, dict[int, dict[str, Any]]] = {}
        if not self.progress.is_dir():
            return parts
        for sub in sorted(self.progress.iterdir()):
            path = sub / JOURNAL
            if sub.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                with open(path, "r+b") as fh:
                    fh.truncate(end)
            records = parts.setdefault(sub.name, {})
            for line in data[:end].splitlines():
                try:
                    rec = json.loads(line)
                    records[int(rec["batch"])] = rec
                except (ValueError, KeyError, TypeError):
                    continue  # not a record: its batch is simply recomputed
        return parts

    def part_path(self, model: str, batch: int) -> Path:
        return self.progress / model / f"part-{batch:06d}.parquet"

    def write_part(self, model: str, batch: int, rows: pd.DataFrame) -> None:
        """Store one batch's rows, then record the batch as done (in that order), with the
        part's checksum and its row ids' checksum."""
        buf = io.BytesIO()
        rows.to_parquet(buf, index=False)
        data = buf.getvalue()
        with atomic_write(self.part_path(model, batch), "wb") as fh:
            fh.write(data)
        record = {
            "batch": batch,
            "n": len(rows),
            "ids_sha256": _ids_sha256(rows["id"].astype(str).tolist()),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        # open() creates the journal with the umask's mode, like every other run file.
        with open(self.journal_path(model), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._parts.setdefault(model, {})[batch] = record

    def verify(self, model: str, batch_ids: list[list[str]]) -> set[int]:
        """Completed batches of ``model`` whose part is intact and holds exactly the ids of its
        batch (``batch_ids[b]``, in order). Any other completed batch is forgotten, so that it
        is recomputed: a part that is unreadable, altered by one bit, or copied from another
        batch is never merged."""
        completed = self.completed(model)
        good = {
            b
            for b in completed
            if b < len(batch_ids) and self._read_part(model, b, batch_ids[b]) is not None
        }
        if good != completed:
            kept = {b: r for b, r in self._parts.get(model, {}).items() if b in good}
            self._parts[model] = kept
            lines = "".join(json.dumps(kept[b], sort_keys=True) + "\n" for b in sorted(kept))
            write_text(self.journal_path(model), lines)
        return good

    def _read_part(self, model: str, batch: int, ids: list[str]) -> pd.DataFrame | None:
        record = self._parts.get(model, {}).get(batch)
        if not isinstance(record, dict) or record.get("ids_sha256") != _ids_sha256(ids):
            return None
        try:
            data = self.part_path(model, batch).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            return None
        try:
            rows = pd.read_parquet(io.BytesIO(data))
        except Exception:  # pyarrow raises several unrelated types for a corrupt file
            return None
        if rows["id"].astype(str).tolist() != list(ids) or set(rows["model"]) != {model}:
            return None
        return rows

    def collect(self, model: str, batch_ids: list[list[str]]) -> pd.DataFrame:
        """All rows of ``model`` in batch order, each part checked as in :meth:`verify`.

        Raises:
            RunError: a batch is missing, or its part fails the check.
        """
        missing = sorted(set(range(len(batch_ids))) - self.completed(model))
        if missing:
            raise RunError(f"{self.progress / model}: batches {missing[:5]} are not done")
        parts = []
        for b, ids in enumerate(batch_ids):
            rows = self._read_part(model, b, ids)
            if rows is None:
                raise RunError(
                    f"{self.part_path(model, b)}: changed since it was written (checksum or "
                    "row ids differ); resume the run to recompute it"
                )
            parts.append(rows)
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

        path = self.run_dir / name
        with atomic_write(path, "wb") as fh:
            np.savez_compressed(fh, **dict(arrays))
        return path

    def finish(self) -> None:
        self._state["finished"] = True
        self._save_state()


def _ids_sha256(ids: list[str]) -> str:
    # JSON keeps ids containing separators unambiguous.
    return hashlib.sha256(json.dumps(list(ids)).encode("utf-8")).hexdigest()


_WHAT = {
    "config_hash": "the config",
    "fingerprint": "the dataset",
    "batch_size": "the batch size",
    "models": "a model checkpoint",
}
