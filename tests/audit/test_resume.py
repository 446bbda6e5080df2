"""Nothing is lost: a killed or interrupted run resumes without duplicate rows."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import bias_audit.pipelines._stream as run_module
from bias_audit.cli import main
from bias_audit.core.config import AuditConfig
from bias_audit.errors import RunError
from bias_audit.pipelines import audit
from tests.audit.conftest import N, kill_after_parts, part_files
from tests.audit.test_run import _env

# One slow model (plain state_dict: arch and classes from the config), small batches.
SLOW = """title = "slow"
[data]
manifest = "manifest.csv"
groups = ["gender"]
image_size = 24
batch_size = 4
[regions]
causal = ["coat"]
confounder = ["face", "hair"]
[stats]
min_group_size = 5
bootstrap = 20
permutations = 20
[trust]
enabled = false
[discovery]
enabled = false
[interventions]
enabled = false
[report]
enabled = false
gallery_per_cell = 1
[[models]]
name = "slow"
arch = "tests.audit.nets:build_slow"
checkpoint = "plain.pt"
classes = ["doctor", "nurse"]
"""


@pytest.fixture(scope="module")
def slow_config(world) -> Path:
    path = world["root"] / "slow.toml"
    path.write_text(SLOW)
    return path


@pytest.fixture(scope="module")
def reference(slow_config, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("ref") / "run"
    return audit(slow_config, out=out, progress=False).samples


@pytest.mark.slow
def test_resume_after_kill(slow_config, reference, tmp_path):
    out = tmp_path / "run"
    args = ["run", str(slow_config), "--out", str(out), "-q"]
    kill_after_parts(args, out, _env(BIAS_AUDIT_TEST_DELAY="0.4"))
    done = len(part_files(out))
    assert 3 <= done < N // 4, "the run was not killed in the middle"
    assert not (out / "summary.json").exists()
    # without --resume, the half-done folder is not overwritten
    assert main(["run", str(slow_config), "--out", str(out), "-q"]) == 2
    assert len(part_files(out)) == done
    # resume: only the missing batches run (counted), and the rows equal an uninterrupted run
    calls = []
    original = run_module.explain_batch

    def counting(model, batch, *, spec):
        calls.append(len(batch))
        return original(model, batch, spec=spec)

    run_module.explain_batch = counting
    try:
        assert main(["run", str(slow_config), "--out", str(out), "--resume", "-q"]) == 0
    finally:
        run_module.explain_batch = original
    assert len(calls) in (N // 4 - done, N // 4 - done + 1)  # +1: killed between part and state
    samples = pd.read_parquet(out / "samples.parquet")
    assert not samples.duplicated(["model", "id"]).any()
    pd.testing.assert_frame_equal(samples, reference)


def test_ctrl_c_leaves_complete_batches_and_says_how_to_resume(
    slow_config, reference, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    original = run_module.explain_batch
    seen = []

    def interrupted(model, batch, *, spec):
        seen.append(1)
        if len(seen) == 4:
            raise KeyboardInterrupt
        return original(model, batch, spec=spec)

    monkeypatch.setattr(run_module, "explain_batch", interrupted)
    assert main(["run", str(slow_config), "--out", str(out), "-q"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err and str(out) in err
    assert len(part_files(out)) == 3
    # atomic writes: no temporary file is left behind anywhere
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(run_module, "explain_batch", original)
    assert main(["run", str(slow_config), "--out", str(out), "--resume", "-q"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "samples.parquet"), reference)


def test_resume_refuses_changed_config_or_nothing_to_resume(slow_config, world, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunError, match="nothing to resume"):
        audit(slow_config, out=out, resume=True, progress=False)
    audit(slow_config, out=out, progress=False)
    changed = world["root"] / "slow2.toml"
    changed.write_text(SLOW.replace("image_size = 24", "image_size = 16"))
    with pytest.raises(RunError, match=r"cannot resume: the config changed"):
        audit(AuditConfig.from_toml(changed), out=out, resume=True, progress=False)
    bigger = world["root"] / "slow3.toml"
    bigger.write_text(SLOW.replace("batch_size = 4", "batch_size = 5"))
    with pytest.raises(RunError, match=r"config changed|batch size changed"):
        audit(AuditConfig.from_toml(bigger), out=out, resume=True, progress=False)
    # a title change does not block a resume
    retitled = world["root"] / "slow4.toml"
    retitled.write_text(SLOW.replace('title = "slow"', 'title = "renamed"'))
    r = audit(AuditConfig.from_toml(retitled), out=out, resume=True, progress=False)
    assert r.summary["title"] == "renamed" and len(r.samples) == N


def test_resume_and_force_exclude_each_other(slow_config, tmp_path, capsys):
    assert main(["run", str(slow_config), "--out", str(tmp_path / "r"), "--resume", "--force"]) == 2
    assert "--resume and --force" in capsys.readouterr().err


def test_pipelined_and_sequential_runs_agree(slow_config, reference, world, tmp_path):
    # interventions on -> the step runs sequentially; the shared columns must be identical
    on = world["root"] / "slow_on.toml"
    on.write_text(SLOW.replace("enabled = false\n[report]", "enabled = true\n[report]"))
    seq = audit(on, out=tmp_path / "seq", progress=False).samples
    assert "flip:confounder" in seq.columns
    pd.testing.assert_frame_equal(seq[reference.columns], reference)


def test_a_failing_batch_stops_the_run_and_keeps_earlier_parts(slow_config, tmp_path, monkeypatch):
    original = run_module.batch_rows
    seen = []

    def failing(model, batch, exp, *, spec):
        seen.append(1)
        if len(seen) == 3:
            raise RunError("batch 2 broke")
        return original(model, batch, exp, spec=spec)

    monkeypatch.setattr(run_module, "batch_rows", failing)
    with pytest.raises(RunError, match="batch 2 broke"):
        audit(slow_config, out=tmp_path / "r", progress=False)
    assert len(part_files(tmp_path / "r")) == 2


@pytest.mark.slow
def test_real_sigint_exits_130_with_one_line(slow_config, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bias_audit", "run", str(slow_config), "--out", str(out), "-q"],
        env=_env(BIAS_AUDIT_TEST_DELAY="0.3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(part_files(out)) < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the run never wrote 2 batches"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert err.count("\n") == 1 and "Traceback" not in err and "--resume" in err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert main(["run", str(slow_config), "--out", str(out), "--resume", "-q"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "samples.parquet"), reference)


def _half_run(slow_config, out: Path, monkeypatch) -> int:
    """Interrupt a run after 5 of its 10 batches; returns the number of parts written."""
    original = run_module.explain_batch
    seen = []

    def interrupted(model, batch, *, spec):
        seen.append(1)
        if len(seen) == 6:
            raise KeyboardInterrupt
        return original(model, batch, spec=spec)

    monkeypatch.setattr(run_module, "explain_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        audit(slow_config, out=out, progress=False)
    monkeypatch.setattr(run_module, "explain_batch", original)
    return len(part_files(out))


def _counting(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = run_module.explain_batch

    def counting(model, batch, *, spec):
        calls.append(len(batch))
        return original(model, batch, spec=spec)

    monkeypatch.setattr(run_module, "explain_batch", counting)
    return calls


@pytest.mark.parametrize("tamper", ["unreadable", "other_batch", "bit_flip"])
def test_resume_recomputes_a_part_that_fails_its_check(
    slow_config, reference, tmp_path, monkeypatch, tamper
):
    out = tmp_path / "run"
    assert _half_run(slow_config, out, monkeypatch) == 5
    parts = part_files(out)
    journal = (out / "progress" / "slow" / "parts.jsonl").read_text().splitlines()
    rec = {r["batch"]: r for r in map(json.loads, journal)}[1]
    assert rec["batch"] == 1 and rec["n"] == 4 and len(rec["sha256"]) == 64
    if tamper == "unreadable":
        parts[1].write_bytes(b"\x00" * 10)
    elif tamper == "other_batch":
        # A valid part, from batch 3: once merged as 4 duplicate rows.
        parts[1].write_bytes(parts[3].read_bytes())
    else:
        raw = bytearray(parts[1].read_bytes())
        raw[len(raw) // 2] ^= 0x01
        parts[1].write_bytes(bytes(raw))
    calls = _counting(monkeypatch)
    r = audit(slow_config, out=out, resume=True, progress=False)
    assert len(calls) == N // 4 - 5 + 1  # the 5 missing batches and the tampered one
    assert not r.samples.duplicated(["model", "id"]).any()
    pd.testing.assert_frame_equal(r.samples, reference)


def test_a_part_changed_after_the_check_is_never_merged(slow_config, tmp_path, monkeypatch):
    from bias_audit.io.run_folder import RunStore

    out = tmp_path / "run"
    audit(slow_config, out=out, progress=False)
    parts = part_files(out)
    parts[2].write_bytes(parts[0].read_bytes())
    store = RunStore(out)
    store.open(json.loads((out / "progress" / "state.json").read_text()), resume=True)
    ids = [f"s{i:03d}" for i in range(N)]
    try:
        with pytest.raises(RunError, match=r"part-000002.parquet: changed since it was written"):
            store.collect("slow", [ids[i : i + 4] for i in range(0, N, 4)])
    finally:
        store.close()


def test_a_second_run_into_a_locked_folder_is_refused_with_the_pid(
    slow_config, world, tmp_path, capsys
):
    import os

    from bias_audit.io.run_folder import RunStore

    out = tmp_path / "run"
    audit(slow_config, out=out, progress=False)
    key = json.loads((out / "progress" / "state.json").read_text())
    holder = RunStore(out)
    holder.open(key, resume=True)  # a running audit holds the lock
    try:
        state_before = (out / "progress" / "state.json").read_bytes()
        n_parts = len(part_files(out))
        for flags in (["--force"], ["--resume"]):
            code = main(["run", str(slow_config), "--out", str(out), "-q", *flags])
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1
            assert f"in use by another running audit (pid {os.getpid()}" in err
        # the force run wiped nothing of the running audit's progress
        assert (out / "progress" / "state.json").read_bytes() == state_before
        assert len(part_files(out)) == n_parts
    finally:
        holder.close()
    # released: the next run goes ahead
    assert main(["run", str(slow_config), "--out", str(out), "-q", "--force"]) == 0


@pytest.mark.slow
def test_two_simultaneous_runs_one_is_refused(slow_config, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bias_audit", "run", str(slow_config), "--out", str(out), "-q"]
    # Slow enough batches that the first run still holds the folder while the second starts
    # (a fresh interpreter importing torch takes seconds on a loaded machine).
    first = subprocess.Popen(cmd, env=_env(BIAS_AUDIT_TEST_DELAY="1.5"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not part_files(out):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run([*cmd, "--force"], env=_env(), capture_output=True, text=True,
                                timeout=120)  # fmt: skip
        assert second.returncode == 2
        assert f"(pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
    samples = pd.read_parquet(out / "samples.parquet")
    assert len(samples) == N and not samples.duplicated(["model", "id"]).any()
