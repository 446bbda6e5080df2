"""glibc malloc settings for tensor work: keep freed memory for the next pass.

glibc serves every block above its mmap threshold (at most 32 MB, raised dynamically) with a
fresh ``mmap`` and unmaps it on ``free``. A ResNet-50 pass at 224 px and batch 16 allocates
activations of 51 MB, so each pass faults its activations in again page by page: 40,000
faults and a quarter of the pass's time, measured (``benchmarks/explain_bench.py``). Raising
the mmap and trim thresholds makes freed blocks go back to malloc's heap, where the next pass
finds them already mapped. The cost: the process keeps up to its peak memory instead of
returning it to the system between passes.

Applied once per process by ``explain``, ``train_classifier`` and the CLI, before their first
pass. ``BIAS_AUDIT_MALLOC=default`` keeps the allocator as it is; a ``GLIBC_TUNABLES`` that
sets malloc options is the user's own choice and is left alone too. Other C libraries (macOS,
musl) are not touched.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["ENV", "LIMIT", "keep_freed_memory", "malloc_setting"]

#: The environment variable that turns the setting off (``default``, ``off``, ``0``).
ENV = "BIAS_AUDIT_MALLOC"
#: Both thresholds, in bytes: blocks up to 1 GiB come from the heap, and up to 1 GiB of freed
#: memory at its top is kept (mallopt takes an int).
LIMIT = 1 << 30

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_OFF = {"default", "off", "0", "false", "no"}

_state: str | None = None


def _decide() -> str:
    if os.environ.get(ENV, "").strip().lower() in _OFF:
        return f"default ({ENV})"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "default (GLIBC_TUNABLES)"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "default (not glibc)"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "default (no mallopt)"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; a refused value leaves that threshold as it was.
    if mallopt(_M_MMAP_THRESHOLD, LIMIT) != 1 or mallopt(_M_TRIM_THRESHOLD, LIMIT) != 1:
        return "default (mallopt refused)"
    return "keep-freed"


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to :data:`LIMIT`, once per process.

    Returns:
        True when the setting is in force (now or from an earlier call).
    """
    global _state
    if _state is None:
        _state = _decide()
    return _state == "keep-freed"


def malloc_setting() -> str:
    """What :func:`keep_freed_memory` did: ``"keep-freed"``, ``"default (<why>)"``, or
    ``"not applied"`` before the first call."""
    return _state or "not applied"
