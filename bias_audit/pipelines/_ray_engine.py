"""The Ray engine: the same batches, the same pure step, on a Ray cluster (``[run] engine="ray"``).

Ray Data streams one row per pending batch of the local engine's partition (its index and its
sample indices); ``map_batches`` runs the pure :func:`audit_batch` in a pool of actors, each of
which loads the model once; the driver writes each batch's rows as the same Parquet part through
the same :class:`RunStore`. So resume, the samples table and everything after it are the local
engine's code, and a run started on one engine can be resumed on the other.

The rows travel back pickled, not as Arrow columns: a round trip through Arrow could change a
dtype (or drop ``rows.attrs``) and the parts would then differ from the local engine's.

Only this module imports ``ray`` (the optional extra ``bias-audit[ray]``); the audit imports it
only when the engine is asked for.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import pickle
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from bias_audit.core.config import RunConfig
from bias_audit.errors import BiasAuditError, ConfigError, RunError
from bias_audit.io.data import collate
from bias_audit.pipelines._plan import _load, _Plan
from bias_audit.pipelines._step import StepSpec, audit_batch
from bias_audit.pipelines._stream import _progress_bar

try:
    import ray
    import ray.data

    HAVE_RAY = True
except ImportError:  # the optional extra is missing; RayEngine says so
    HAVE_RAY = False

__all__ = ["RayEngine", "MISSING_RAY"]

MISSING_RAY = "engine 'ray' needs the optional extra: pip install 'bias-audit[ray]'"
#: Object store of a Ray this engine starts itself: the rows and the dataset are small, and the
#: machine is usually shared with the Ray workers' own memory.
LOCAL_OBJECT_STORE = 512 * 1024**2


class RayEngine:
    """A Ray session for one audit: joins ``config.address`` (or starts a local Ray when it is
    None and none is running) on enter, and shuts down on exit only a Ray it started itself.

    Raises:
        ConfigError: ray is not installed, or the cluster at ``address`` cannot be joined.
    """

    def __init__(self, config: RunConfig) -> None:
        if not HAVE_RAY:
            raise ConfigError(MISSING_RAY)
        self.config = config
        self._started = False
        self._jobs: list[_Job] = []

    def __enter__(self) -> RayEngine:
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.WARNING,
            }
            if self.config.address is None:
                kwargs["object_store_memory"] = LOCAL_OBJECT_STORE
            try:
                ray.init(address=self.config.address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as err:
                # the setting at fault is the address (None: starting a local Ray failed)
                raise ConfigError(
                    f"[run] address {self.config.address!r}: cannot join the Ray cluster: "
                    f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                ) from err
            self._started = True
        # The audit has its own progress bar; Ray Data's would interleave with it.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        if hasattr(context, "print_on_execution_start"):
            context.print_on_execution_start = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            ray.shutdown()
            self._started = False

    def queue(
        self, plan: _Plan, ds, batches: list[list[int]], pending: list[int], spec: StepSpec
    ) -> None:
        """Add one model's ``pending`` batches (of the local engine's partition ``batches``)
        to the run; :meth:`run` streams every queued model through one actor pool."""
        self._jobs.append(_Job(plan=plan, ds=ds, batches=batches, pending=pending, spec=spec))

    def run(self, store, progress: bool) -> tuple[dict[str, dict], dict[str, float]]:
        """Run the queued batches on the cluster; each batch's rows are stored as its part as
        soon as they arrive (in any order).

        Returns:
            The layer record per model (``target_layer``, ``layer_shape``), as the local engine
            gives it, and the actors' compute seconds per model (the sum over its batches).

        Raises:
            RunError: a batch came back without rows.
        """
        jobs, self._jobs = self._jobs, []
        if not jobs:
            return {}, {}
        workers = self.config.workers
        gpus = self.config.gpus_per_worker
        # Each actor gets an equal share of the cluster's CPUs (as torch threads), so that one
        # actor on one machine uses the machine as the local engine does; a share below one CPU
        # still lets every actor of the pool be placed.
        share = float(ray.cluster_resources().get("CPU", 1.0)) / workers
        items = [
            {"job": j, "batch": b, "indices": job.batches[b]}
            for j, job in enumerate(jobs)
            for b in job.pending
        ]
        mapped = _map_batches(
            _from_items(items), _BatchActor, workers=workers, num_cpus=share, num_gpus=gpus,
            fn_constructor_kwargs={
                "jobs": [(job.plan, job.ds, job.spec) for job in jobs],
                "threads": max(1, int(share)),
                "device": "cuda" if gpus > 0 else "cpu",
            },
        )  # fmt: skip
        total = sum(len(job.batches[b]) for job in jobs for b in job.pending)
        names = ", ".join(job.spec.model for job in jobs)
        bar = _progress_bar(total, names, progress)
        layers: dict[str, dict] = {}
        seconds: dict[str, float] = {}
        written: set[tuple[int, int]] = set()
        try:
            for chunk in mapped.iter_batches(batch_size=None, batch_format="numpy"):
                for j, b, s, blob, error in zip(
                    chunk["job"], chunk["batch"], chunk["seconds"], chunk["rows"],
                    chunk["error"], strict=True,
                ):  # fmt: skip
                    if error:
                        # An input error in an actor: raised here as itself, with its one-line
                        # message, as the local engine raises it (Ray would wrap it in a
                        # remote traceback).
                        raise pickle.loads(error)
                    j, b = int(j), int(b)
                    name = jobs[j].spec.model
                    rows: pd.DataFrame = pickle.loads(blob)
                    store.write_part(name, b, rows)
                    written.add((j, b))
                    seconds[name] = seconds.get(name, 0.0) + float(s)
                    layers[name] = {
                        "target_layer": rows.attrs["target_layer"],
                        "layer_shape": list(rows.attrs["layer_shape"]),
                    }
                    if bar is not None:
                        bar.update(len(rows))
        finally:
            if bar is not None:
                bar.close()
        for j, job in enumerate(jobs):
            missing = [b for b in job.pending if (j, b) not in written]
            if missing:
                raise RunError(
                    f"the Ray engine returned no rows for batches {missing[:5]} of model "
                    f"{job.spec.model!r}"
                )
        return layers, seconds


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Job:
    plan: _Plan
    ds: Any
    batches: list[list[int]]
    pending: list[int]
    spec: StepSpec


class _BatchActor:
    """One Ray actor: loads each model once (on its first batch), then runs the pure step on
    each batch it is sent."""

    def __init__(self, *, jobs: list[tuple[_Plan, Any, StepSpec]], threads: int, device: str):
        torch.set_num_threads(threads)
        self.jobs = jobs
        self.specs = [spec for _, _, spec in jobs]
        self.device = torch.device(device)
        self.models: dict[int, torch.nn.Module] = {}

    def _model(self, j: int) -> torch.nn.Module:
        if j not in self.models:
            plan, ds, _ = self.jobs[j]
            self.models[j] = _load(plan, ds, self.device)
        return self.models[j]

    def __call__(self, table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"job": [], "batch": [], "seconds": [], "rows": [], "error": []}
        for j, b, indices in zip(table["job"], table["batch"], table["indices"], strict=True):
            j = int(j)
            t0 = time.perf_counter()
            try:
                model, ds, spec = self._model(j), self.jobs[j][1], self.specs[j]
                batch = collate([ds[int(i)] for i in indices])
                rows = audit_batch(model, batch, spec=spec)
            except BiasAuditError as err:  # the input's fault: handed to the driver as is
                out["job"].append(j)
                out["batch"].append(int(b))
                out["seconds"].append(time.perf_counter() - t0)
                out["rows"].append(b"")
                out["error"].append(pickle.dumps(err.with_traceback(None)))
                continue
            if spec.target_layer is None:
                # As the local engine: the automatic layer is resolved once, then reused.
                self.specs[j] = dataclasses.replace(spec, target_layer=rows.attrs["target_layer"])
            out["job"].append(j)
            out["batch"].append(int(b))
            out["seconds"].append(time.perf_counter() - t0)
            out["rows"].append(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
            out["error"].append(b"")
        return {
            "job": np.asarray(out["job"], dtype=np.int64),
            "batch": np.asarray(out["batch"], dtype=np.int64),
            "seconds": np.asarray(out["seconds"], dtype=np.float64),
            "rows": _objects(out["rows"]),
            "error": _objects(out["error"]),
        }


def _objects(values: list[bytes]) -> np.ndarray:
    # an object array, so numpy keeps each blob whole (a bytes dtype would strip trailing NULs)
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _from_items(items: list[dict[str, Any]]):
    # One block per batch, so that every actor of the pool gets work from the start.
    params = inspect.signature(ray.data.from_items).parameters
    key = "override_num_blocks" if "override_num_blocks" in params else "parallelism"
    return ray.data.from_items(items, **{key: max(1, len(items))})


def _map_batches(data, cls, *, workers: int, num_cpus: float, num_gpus: float, **kwargs):
    # ActorPoolStrategy(size=) is in every Ray this supports (2.9+); ``concurrency=`` came and
    # went (deprecated in 2.51).
    return data.map_batches(
        cls, batch_size=1, batch_format="numpy", num_cpus=num_cpus,
        num_gpus=num_gpus or None, compute=ray.data.ActorPoolStrategy(size=workers), **kwargs,
    )  # fmt: skip
