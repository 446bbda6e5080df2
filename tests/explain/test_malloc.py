"""The allocator setting that keeps a pass from faulting its activations in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)

# A conv layer whose (2, 32, 512, 512) float32 output is 64 MB: above glibc's largest dynamic
# mmap threshold (32 MB), so by default every pass maps it afresh and faults it in page by page.
SCRIPT = r"""
import json, resource, sys, torch
from torch import nn
from bias_audit.core import _malloc
from bias_audit.core.maps import explain
torch.manual_seed(0)
torch.set_num_threads(1)
model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 3, padding=1),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
x = torch.randn(2, 3, 512, 512)
for _ in range(3):  # warm-up: the first call sets it; the heap settles over a few passes
    explain(model, x, "gradcam", target_layer="3")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    explain(model, x, "gradcam", target_layer="3")
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
print(json.dumps({"faults": faults, "setting": _malloc.malloc_setting()}))
"""


def _run(**env: str) -> dict:
    full = {k: v for k, v in os.environ.items() if k not in ("BIAS_AUDIT_MALLOC", "GLIBC_TUNABLES")}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True, text=True, timeout=120, env={**full, **env}, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_explain_keeps_freed_memory_so_a_pass_does_not_fault_its_activations_again():
    tuned = _run()
    default = _run(BIAS_AUDIT_MALLOC="default")
    assert tuned["setting"] == "keep-freed"
    assert default["setting"] == "default (BIAS_AUDIT_MALLOC)"
    # 64 MB is 16,000 pages: the default maps it (and its gradient's twin) afresh every pass.
    assert default["faults"] > 15_000
    assert tuned["faults"] < 0.1 * default["faults"]


def test_a_users_own_glibc_tunables_are_left_alone():
    out = _run(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000")
    assert out["setting"] == "default (GLIBC_TUNABLES)"
