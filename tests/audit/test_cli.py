"""CLI commands besides `run`: train, report, case-study, --version, python -m."""

from __future__ import annotations

import subprocess
import sys

from bias_audit.cli import main
from bias_audit.io.checkpoints import read_metadata
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
