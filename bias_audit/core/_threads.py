"""One OpenMP thread for the calling thread, leaving the process's torch thread count alone."""

from __future__ import annotations

import ctypes
import functools
import sys

import torch

__all__ = ["one_thread_here"]


@functools.cache
def _openmp() -> ctypes.CDLL | None:
    # torch's count is one setting for the process, but OpenMP keeps the team size per thread:
    # the runtime torch loaded (its own libgomp in the wheels) answers for this thread only.
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
    except OSError:
        return None
    for path in sorted(paths, key=lambda p: "torch" not in p):
        try:
            lib = ctypes.CDLL(path)
            lib.omp_set_num_threads.argtypes = [ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def one_thread_here() -> bool:
    """Run torch's operations of the calling (helper) thread on one thread.

    The audit decodes images and computes metrics in helper threads beside the explain pass.
    Their operations are small; split over every core they spend more CPU in OpenMP's
    parallel regions and spin-waits than in the work, CPU the explain pass needs. The main
    thread keeps its count. Returns whether the limit took (False where the OpenMP runtime
    is not found: nothing changes then).
    """
    # torch sets a new thread's team size at its first parallel call: make that call happen
    # first, or it would undo the limit.
    torch.get_num_threads()
    lib = _openmp()
    if lib is None:
        return False
    lib.omp_set_num_threads(1)
    return torch.get_num_threads() == 1
