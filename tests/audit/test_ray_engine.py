"""The Ray engine (issue 17): the same samples table as the local engine, resumable, optional.

The tests that start Ray are marked slow and share one local Ray (2 CPUs, loopback only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from bias_audit.cli import _build_parser, _interrupted, _with_run_flags
from bias_audit.core.config import AuditConfig
from bias_audit.errors import ConfigError
from bias_audit.pipelines import audit
from tests.audit.conftest import N, kill_after_parts, part_files, write_config
from tests.audit.test_resume import SLOW
from tests.audit.test_run import REPO, _env

MISSING = "engine 'ray' needs the optional extra: pip install 'bias-audit[ray]'"


def _on(config: AuditConfig, **run) -> AuditConfig:
    return dataclasses.replace(config, run=dataclasses.replace(config.run, **run))


# -- without Ray ---------------------------------------------------------------------------
def test_run_section_defaults_and_checks(world):
    config = AuditConfig.from_toml(write_config(world))
    assert (config.run.engine, config.run.address, config.run.workers) == ("local", None, 1)
    assert config.run.gpus_per_worker == 0.0
    extra = '\n[run]\nengine = "ray"\naddress = "auto"\nworkers = 3\ngpus_per_worker = 0.5\n'
    ray_cfg = AuditConfig.from_toml(write_config(world, "ray.toml", extra=extra))
    assert (ray_cfg.run.engine, ray_cfg.run.address, ray_cfg.run.workers) == ("ray", "auto", 3)
    assert ray_cfg.run.gpus_per_worker == 0.5
    # the engine does not change the rows, so a run can be resumed on the other engine
    assert ray_cfg.samples_hash() == config.samples_hash()
    for bad, what in (
        ('engine = "spark"', "[run] engine: expected one of 'local', 'ray', got 'spark'"),
        ("workers = 0", "[run] workers: expected an integer between 1 and 4096, got 0"),
        ("gpus_per_worker = -1", "[run] gpus_per_worker: expected a number between 0 and 64"),
        ("worker = 2", "[run]: unknown key 'worker'; did you mean 'workers'?"),
    ):
        path = write_config(world, "bad.toml", extra=f"\n[run]\n{bad}\n")
        with pytest.raises(ConfigError) as err:
            AuditConfig.from_toml(path)
        assert what in str(err.value), str(err.value)


def test_cli_flags_override_the_config_and_name_the_flag(world):
    config = AuditConfig.from_toml(write_config(world))
    parse = _build_parser().parse_args
    args = parse(["run", "x.toml", "--engine", "ray", "--workers", "2", "--address", "auto"])
    run = _with_run_flags(config, args).run
    assert (run.engine, run.workers, run.address, run.gpus_per_worker) == ("ray", 2, "auto", 0.0)
    assert _with_run_flags(config, parse(["run", "x.toml"])) is config
    with pytest.raises(ConfigError, match=r"^--workers: expected an integer between 1 and 4096"):
        _with_run_flags(config, parse(["run", "x.toml", "--workers", "0"]))


def test_the_interrupt_message_resumes_on_the_same_engine():
    args = _build_parser().parse_args(
        ["run", "a.toml", "--out", "o", "--engine", "ray", "--workers", "2", "--address", "auto"]
    )
    assert _interrupted(args) == (
        "interrupted; completed batches are saved: resume with "
        "`bias-audit run a.toml --out o --resume --engine ray --address auto --workers 2`"
    )


@pytest.mark.slow
def test_missing_ray_is_one_line_and_touches_no_run_folder(world, tmp_path):
    config = write_config(world, "engine.toml", extra='\n[run]\nengine = "ray"\n')
    out = tmp_path / "run"
    # ray made unimportable, as in an install without the extra
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from bias_audit.cli import main\n"
        f"sys.exit(main(['run', {str(config)!r}, '--out', {str(out)!r}, '-q']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: {MISSING}\n"
    assert not out.exists()


@pytest.mark.slow
def test_the_local_engine_never_imports_ray(world):
    # The whole audit's imports and its engine choice: ray stays out (it is an optional extra).
    code = (
        "import sys\n"
        "import bias_audit, bias_audit.cli\n"
        "from bias_audit.core.config import AuditConfig\n"
        "from bias_audit.pipelines._audit import _engine\n"
        f"engine = _engine(AuditConfig.from_toml({str(write_config(world))!r}))\n"
        "print(type(engine).__name__, 'ray' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "nullcontext False"


# -- on a local Ray ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # The Ray processes inherit this environment: the actors must import tests.audit.nets,
    # and SlowNet (only the kill test's model) sleeps per forward pass in them.
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "BIAS_AUDIT_TEST_DELAY")}
    os.environ["PYTHONPATH"] = str(REPO) + os.pathsep + (saved["PYTHONPATH"] or "")
    os.environ["BIAS_AUDIT_TEST_DELAY"] = "0.5"
    try:
        ray.init(
            num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
            log_to_driver=False, logging_level="warning",
        )  # fmt: skip
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def local_run(world, tmp_path_factory):
    config = AuditConfig.from_toml(write_config(world))
    return audit(config, out=tmp_path_factory.mktemp("local") / "run", progress=False)


def _sorted(samples: pd.DataFrame) -> pd.DataFrame:
    return samples.sort_values(["model", "id"], ignore_index=True)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_ray_gives_the_local_samples_findings_and_gallery(
    ray_cluster, world, local_run, tmp_path, workers
):
    config = _on(AuditConfig.from_toml(write_config(world)), engine="ray", workers=workers)
    result = audit(config, out=tmp_path / "run", progress=False)
    local, remote = _sorted(local_run.samples), _sorted(result.samples)
    assert len(remote) == 2 * N and not remote.duplicated(["model", "id"]).any()
    assert remote["id"].tolist() == local["id"].tolist()
    assert remote["pred"].tolist() == local["pred"].tolist()
    pd.testing.assert_frame_equal(remote, local, check_exact=False, atol=1e-6, rtol=0)
    # the same findings (NaN-aware) and the same gallery selection
    pd.testing.assert_frame_equal(
        pd.DataFrame(result.findings), pd.DataFrame(local_run.findings), check_exact=False
    )
    gallery = json.loads((result.run_dir / "gallery.json").read_text())
    assert gallery["items"]
    assert gallery == json.loads((local_run.run_dir / "gallery.json").read_text())
    for a, b in zip(result.summary["models"], local_run.summary["models"], strict=True):
        assert (a["target_layer"], a["layer_shape"]) == (b["target_layer"], b["layer_shape"])


@pytest.mark.slow
def test_a_killed_ray_run_resumes_without_duplicates(ray_cluster, world, tmp_path):
    slow = world["root"] / "slow_ray.toml"
    slow.write_text(SLOW)
    reference = audit(slow, out=tmp_path / "ref", progress=False).samples
    out = tmp_path / "run"
    args = ["run", str(slow), "--out", str(out), "-q", "--engine", "ray", "--workers", "2"]
    # joins the test's Ray (loopback), whose actors sleep 0.5 s per batch
    kill_after_parts([*args, "--address", ray_cluster], out, _env(), timeout=90)
    assert 3 <= len(part_files(out)) < N // 4, "the run was not killed in the middle"
    # the parts the store recorded as done, by inode: a recomputed part is a new file
    journal = (out / "progress" / "slow" / "parts.jsonl").read_text().splitlines()
    completed = sorted({json.loads(line)["batch"] for line in journal})
    done = {b: (out / "progress" / "slow" / f"part-{b:06d}.parquet").stat().st_ino
            for b in completed}  # fmt: skip
    assert len(done) >= 2
    assert not (out / "summary.json").exists()

    config = _on(AuditConfig.from_toml(slow), engine="ray", workers=2)
    result = audit(config, out=out, resume=True, progress=False)
    assert result.summary["timings"]["resumed"]
    samples = pd.read_parquet(out / "samples.parquet")
    assert not samples.duplicated(["model", "id"]).any()
    pd.testing.assert_frame_equal(samples, reference)
    # the batches done before the kill were kept, not recomputed
    for b, inode in done.items():
        assert (out / "progress" / "slow" / f"part-{b:06d}.parquet").stat().st_ino == inode


@pytest.mark.slow
def test_an_input_error_in_an_actor_is_the_local_engines_one_line_error(
    ray_cluster, world, tmp_path
):
    # a layer the model lacks: found only when the step runs, i.e. inside the actors
    bad = ("[explain]\n", '[explain]\ntarget_layer = "fc.nope"\n')
    config = AuditConfig.from_toml(write_config(world, "bad_layer.toml", replace=bad))
    with pytest.raises(ConfigError) as local:
        audit(config, out=tmp_path / "local", progress=False)
    with pytest.raises(ConfigError) as remote:
        audit(_on(config, engine="ray", workers=2), out=tmp_path / "ray", progress=False)
    assert "'fc.nope'" in str(local.value)
    assert type(remote.value) is type(local.value)
    assert str(remote.value) == str(local.value)
