"""Streaming one model over the dataset: batches in, per-sample rows out, each batch on disk."""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from bias_audit.core._threads import one_thread_here
from bias_audit.io.data import collate
from bias_audit.pipelines._step import StepSpec, batch_rows, explain_batch


def _progress_bar(total: int, desc: str, enabled: bool):
    # A bar redrawn with carriage returns is noise in a log file: only on a terminal.
    if not enabled or not sys.stderr.isatty():
        return None
    return tqdm(total=total, desc=desc, unit="img", leave=False, file=sys.stderr)


def _stream(model, ds, batches, pending, spec, store, config, dev, progress) -> dict:
    loader = DataLoader(
        ds, batch_sampler=[batches[b] for b in pending], collate_fn=collate,
        num_workers=config.data.num_workers, persistent_workers=False,
    )  # fmt: skip
    bar = _progress_bar(sum(len(batches[b]) for b in pending), spec.model, progress)
    layer: dict[str, Any] = {}
    # Without worker processes, a thread decodes the next batches while this one is explained
    # (PIL and torch release the GIL), so loading costs little wall time.
    source = _Prefetch(loader) if config.data.num_workers == 0 else loader
    # Without interventions the table half of the step never touches the model, so a second
    # thread measures and stores batch k while batch k+1 is explained. Parts are still written
    # one at a time and in order; an interrupt waits for the part being written.
    pool = (
        None
        if spec.interventions
        else ThreadPoolExecutor(max_workers=1, initializer=one_thread_here)
    )
    previous = None

    def finish(b: int, batch, out, spec: StepSpec) -> dict[str, Any]:
        rows = batch_rows(model, batch, out, spec=spec)
        store.write_part(spec.model, b, rows)
        if bar is not None:
            bar.update(len(batch))
        return {"target_layer": rows.attrs["target_layer"],
                "layer_shape": list(rows.attrs["layer_shape"])}  # fmt: skip

    try:
        for b, batch in zip(pending, source, strict=True):
            out = explain_batch(model, batch, spec=spec)
            if spec.target_layer is None:
                # Resolve the automatic layer once: explain would probe the model every batch.
                spec = dataclasses.replace(spec, target_layer=out.exp.target_layer)
            if pool is None:
                layer = finish(b, batch, out, spec)
                continue
            if previous is not None:
                layer = previous.result()
            previous = pool.submit(finish, b, batch, out, spec)
        if previous is not None:
            layer = previous.result()
            previous = None
    finally:
        if pool is not None:
            pool.shutdown(wait=True)  # an explained batch is still stored
        if isinstance(source, _Prefetch):
            source.close()
        if bar is not None:
            bar.close()
    return layer


class _Prefetch:
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead.

    Errors of the iterable are re-raised in the consumer; :meth:`close` stops the thread (also
    after Ctrl-C in the consumer), so no thread outlives the run.
    """

    _END = object()

    def __init__(self, iterable, depth: int = 2) -> None:

        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iterable,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, iterable) -> None:
        one_thread_here()
        try:
            for item in iterable:
                if not self._put(item):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put(_Failed(err))
            return
        self._put(self._END)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def close(self) -> None:

        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def _skipped(ds) -> pd.DataFrame:
    skipped = ds.skipped
    if skipped is None or len(skipped) == 0:
        return pd.DataFrame({"row": pd.Series(dtype="int64"), "column": pd.Series(dtype=str),
                             "reason": pd.Series(dtype=str)})  # fmt: skip
    return skipped.astype({"column": str, "reason": str})
