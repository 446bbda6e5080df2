"""Helper threads of the audit run torch on one thread; the results do not depend on it."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
import torch

from bias_audit.core._threads import one_thread_here
from bias_audit.core.config import AuditConfig
from bias_audit.pipelines import audit
from tests.audit.conftest import write_config


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_a_helper_thread_gets_one_thread_and_the_main_thread_keeps_its_count(two_threads):
    seen: dict[str, object] = {}

    def helper() -> None:
        seen["before"] = torch.get_num_threads()
        seen["took"] = one_thread_here()
        seen["after"] = torch.get_num_threads()

    t = threading.Thread(target=helper)
    t.start()
    t.join()
    assert seen["before"] == 2
    assert seen == {"before": 2, "took": True, "after": 1}
    assert torch.get_num_threads() == 2


def test_the_audit_gives_the_same_samples_with_one_and_two_threads(world, tmp_path):
    config = AuditConfig.from_toml(write_config(world, "threads.toml"))
    samples = {}
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            res = audit(config, out=tmp_path / f"t{threads}", progress=False)
        finally:
            torch.set_num_threads(before)
        samples[threads] = pd.read_parquet(res.run_dir / "samples.parquet")
        assert torch.get_num_threads() == before
    assert len(samples[1]) > 0
    pd.testing.assert_frame_equal(samples[1], samples[2], check_exact=True)
