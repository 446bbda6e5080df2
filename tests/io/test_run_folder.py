"""The run folder's journal of completed batches."""

from __future__ import annotations

import json

import pandas as pd

from bias_audit.io.run_folder import RunStore

KEY = {"config_hash": "c", "fingerprint": "f", "batch_size": 2, "models": ["m"]}


def _rows(batch: int) -> pd.DataFrame:
    return pd.DataFrame({"model": ["m", "m"], "id": [f"{batch}a", f"{batch}b"], "v": [1.0, 2.0]})


def _ids(n: int) -> list[list[str]]:
    return [[f"{b}a", f"{b}b"] for b in range(n)]


def test_recording_a_batch_appends_one_line_and_leaves_the_state_file_alone(tmp_path):
    with RunStore(tmp_path / "run") as store:
        store.open(KEY)
        state = tmp_path / "run" / "progress" / "state.json"
        before = state.read_bytes()
        for b in range(40):
            store.write_part("m", b, _rows(b))
        # The state file does not grow with the run (it was rewritten whole for every batch).
        assert state.read_bytes() == before
        lines = store.journal_path("m").read_text().splitlines()
        assert [json.loads(line)["batch"] for line in lines] == list(range(40))
        assert store.completed("m") == set(range(40))


def _three_parts(run) -> RunStore:
    """A finished store of batches 0-2 of model "m" (closed)."""
    with RunStore(run) as store:
        store.open(KEY)
        for b in range(3):
            store.write_part("m", b, _rows(b))
    return store


def test_a_resume_cuts_a_torn_last_line_and_keeps_the_batches_before_it(tmp_path):
    run = tmp_path / "run"
    journal = _three_parts(run).journal_path("m")
    # A kill in the middle of the append of batch 3.
    with open(journal, "a") as fh:
        fh.write('{"batch": 3, "n": 2, "ids_sha')
    with RunStore(run) as store:
        assert store.open(KEY, resume=True)
        assert store.completed("m") == {0, 1, 2}
        assert store.verify("m", _ids(4)) == {0, 1, 2}
        store.write_part("m", 3, _rows(3))
        lines = journal.read_text().splitlines()
        assert [json.loads(line)["batch"] for line in lines] == [0, 1, 2, 3]
        rows = store.collect("m", _ids(4))
        assert rows["id"].tolist() == [i for pair in _ids(4) for i in pair]


def test_a_part_that_fails_its_check_leaves_the_journal(tmp_path):
    run = tmp_path / "run"
    store = _three_parts(run)
    store.part_path("m", 1).write_bytes(store.part_path("m", 0).read_bytes())
    with RunStore(run) as store:
        store.open(KEY, resume=True)
        assert store.verify("m", _ids(3)) == {0, 2}
    with RunStore(run) as store:  # and stays out of it on the next resume
        store.open(KEY, resume=True)
        assert store.completed("m") == {0, 2}


def test_force_removes_the_journal_with_the_parts(tmp_path):
    run = tmp_path / "run"
    with RunStore(run) as store:
        store.open(KEY)
        store.write_part("m", 0, _rows(0))
    with RunStore(run) as store:
        assert not store.open(KEY, force=True)
        assert store.completed("m") == set()
        assert not store.journal_path("m").exists()
