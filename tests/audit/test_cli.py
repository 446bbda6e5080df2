"""CLI commands besides `run`: train, report, case-study, --version, python -m."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from bias_audit.cli import main
from bias_audit.io.checkpoints import read_metadata
from tests.audit.conftest import write_config
from tests.audit.test_run import REPO, _env


def test_train_from_flags_then_toml_errors(world, tmp_path, capsys):
    out = tmp_path / "t"
    code = main(["train", "--train-manifest", str(world["manifest"]), "--arch", "smallcnn_w8",
                 "--image-size", "24", "--epochs", "1", "--batch-size", "20", "--groups",
                 "gender", "--out", str(out), "-q"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    meta = read_metadata(out / "model.pt")
    assert meta.arch == "smallcnn_w8" and meta.image_size == 24
    assert meta.classes == ("doctor", "nurse")
    # a TOML file of the same keys; relative paths are relative to the file
    cfg = world["root"] / "train.toml"
    cfg.write_text('train_manifest = "manifest.csv"\nepochs = 1\nimage_size = 24\nbogus = 3\n')
    assert main(["train", str(cfg), "--out", str(tmp_path / "t2")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'bogus'" in err and err.count("\n") == 1
    assert main(["train", str(tmp_path / "none.toml")]) == 2
    assert "none.toml: config file not found" in capsys.readouterr().err


def test_report_needs_a_finished_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_case_study_command_is_wired(tmp_path, capsys):
    try:
        from bias_audit.case_studies import run_case_study  # noqa: F401
    except ImportError:
        assert main(["case-study", "nurse-doctor", "--out", str(tmp_path / "cs")]) == 2
        assert "run_case_study is not available" in capsys.readouterr().err


def test_case_study_strict_exits_1_on_a_failed_check(tmp_path, monkeypatch, capsys):
    import bias_audit.case_studies as cs
    from bias_audit.case_studies import AcceptanceCheck, CaseStudyResult

    def fake(name, **kwargs):
        checks = (
            AcceptanceCheck(name="accuracy [female / doctor]", model="biased", value=0.5,
                            op="<=", limit=0.75, passed=True),
            AcceptanceCheck(name="accuracy [female / doctor]", model="debiased_penalty",
                            value=0.895, op=">=", limit=0.9, passed=kwargs["seed"] != 1),
        )  # fmt: skip
        return CaseStudyResult(name=name, run_dir=tmp_path, audit_dir=tmp_path, report=None,
                               quick=False, checks=checks)  # fmt: skip

    monkeypatch.setattr(cs, "run_case_study", fake)
    base = ["case-study", "nurse-doctor", "--out", str(tmp_path)]
    assert main([*base, "--strict", "--seed", "1"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main([*base, "--seed", "1"]) == 0  # without --strict the failure is only printed
    assert main([*base, "--strict", "--seed", "2"]) == 0


def test_python_dash_m_and_version():
    proc = subprocess.run([sys.executable, "-m", "bias_audit", "--version"], capture_output=True,
                          text=True, env=_env(), cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.startswith("bias-audit ")
    proc = subprocess.run(
        [sys.executable, "-m", "bias_audit", "run", "missing.toml"],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == "error: missing.toml: config file not found\n"


def _one_line_error(proc_or_err: subprocess.CompletedProcess | str) -> str:
    err = proc_or_err if isinstance(proc_or_err, str) else proc_or_err.stderr
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.slow
def test_unwritable_out_is_one_line_exit_2(world):
    proc = subprocess.run(
        [sys.executable, "-m", "bias_audit", "run", str(write_config(world)), "--out",
         "/proc/bias-audit-x/run", "-q"],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "/proc/bias-audit-x" in _one_line_error(proc)


def test_full_disk_is_one_line_naming_the_file(world, tmp_path, capsys, monkeypatch):
    from bias_audit.io.run_folder import RunStore

    def full(self, name, table):
        path = self.run_dir / name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(RunStore, "write_table", full)
    out = tmp_path / "run"
    assert main(["run", str(write_config(world)), "--out", str(out), "-q"]) == 2
    err = _one_line_error(capsys.readouterr().err)
    # the first table written names itself, inside the run folder
    assert f"{out}{os.sep}" in err and ".parquet: No space left on device" in err


def test_long_model_name_and_reserved_group_are_one_line(world, tmp_path, capsys):
    long = write_config(world, "long.toml", replace=('name = "biased"', f'name = "{"m" * 300}"'))
    assert main(["run", str(long), "--out", str(tmp_path / "a"), "-q"]) == 2
    err = _one_line_error(capsys.readouterr().err)
    assert "[models.1] name: expected 1 to 64" in err and len(err) < 300
    grp = write_config(world, "grp.toml", replace=('groups = ["gender"]', 'groups = ["model"]'))
    assert main(["run", str(grp), "--out", str(tmp_path / "b"), "-q"]) == 2
    assert "[data] groups: 'model' is a column" in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_nul_byte_in_a_manifest_path_is_skipped_and_recorded(world, tmp_path, capsys):
    df = pd.read_csv(world["manifest"], dtype=str, keep_default_na=False)
    df.loc[0, "image"] = "img/000.png\x00.txt"
    df.to_json(world["root"] / "nul.jsonl", orient="records", lines=True)
    skip = ('manifest = "manifest.csv"', 'manifest = "nul.jsonl"\non_error = "skip"')
    cfg = write_config(world, "nul.toml", replace=skip)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 0, capsys.readouterr().err
    skipped = pd.read_parquet(out / "skipped.parquet")
    assert skipped[["row", "column"]].values.tolist() == [[1, "image"]]
    assert "control characters" in skipped["reason"].iloc[0]
    assert "s000" not in set(pd.read_parquet(out / "samples.parquet")["id"])


@pytest.mark.slow
def test_hostile_checkpoint_metadata_is_one_line_and_runs_nothing(world, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    state = torch.load(world["biased"], weights_only=True)
    state["meta"] = {**state["meta"], "arch": "tests.models.evil_factory:build",
                     "image_size": 100000}  # fmt: skip
    torch.save(state, world["root"] / "huge.pt")
    edit = ('checkpoint = "biased.pt"\narch = "tests.audit.nets:build"', 'checkpoint = "huge.pt"')
    cfg = write_config(world, "huge.toml", replace=edit)
    proc = subprocess.run(
        [sys.executable, "-m", "bias_audit", "run", str(cfg), "--out", str(tmp_path / "r"), "-q"],
        capture_output=True, text=True, env=_env(BIAS_AUDIT_TEST_MARKER=str(marker)), cwd=REPO,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    err = _one_line_error(proc)
    assert "huge.pt" in err and "'image_size': expected an integer between 8 and 4096" in err
    assert not marker.exists()


def test_train_prints_one_line_per_epoch_into_a_log(world, tmp_path, capsys):
    # stderr is captured, not a terminal: a line per epoch instead of a bar; -q silences it
    args = ["train", "--train-manifest", str(world["manifest"]), "--arch", "smallcnn_w8",
            "--image-size", "24", "--epochs", "2", "--batch-size", "20",
            "--groups", "gender"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert [x.split(":")[0] for x in err.splitlines() if x.startswith("epoch ")] == [
        "epoch 1",
        "epoch 2",
    ]
    assert main([*args, "--out", str(tmp_path / "b"), "-q"]) == 0
    assert capsys.readouterr().err == ""
