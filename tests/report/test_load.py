from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bias_audit.errors import DataError, RunError
from bias_audit.report import load_run, render_report

from .runfolder import make_run_folder


@pytest.fixture
def fresh(tmp_path: Path, run_dir: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


def test_load_reads_every_file(run_dir: Path) -> None:
    data = load_run(run_dir)
    samples = pd.read_parquet(run_dir / "samples.parquet")
    pd.testing.assert_frame_equal(data.samples, samples)
    assert data.models == ["biased", "debiased"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [c["cell"] for c in data.cells] == [c["cell"] for c in summary["data"]["cells"]]
    assert data.config_text == (run_dir / "config.toml").read_text()
    for name in ("gaps", "fairness", "comparisons", "skipped"):
        assert len(getattr(data, name)) == len(pd.read_parquet(run_dir / f"{name}.parquet"))
    assert len(data.gallery["items"]) > 0
    key = data.gallery["items"][0]["key"]
    assert data.arrays[f"image/{key}"].dtype == np.uint8


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="nowhere"):
        load_run(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["summary.json", "samples.parquet"])
def test_missing_required_file(fresh: Path, name: str) -> None:
    (fresh / name).unlink()
    with pytest.raises(RunError, match=name):
        load_run(fresh)


def test_bad_summary_json(fresh: Path) -> None:
    (fresh / "summary.json").write_text("{not json")
    with pytest.raises(DataError, match="summary.json"):
        load_run(fresh)


def test_summary_not_an_object(fresh: Path) -> None:
    (fresh / "summary.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="summary.json"):
        load_run(fresh)


def test_samples_missing_column(fresh: Path) -> None:
    pd.read_parquet(fresh / "samples.parquet").drop(columns="correct").to_parquet(
        fresh / "samples.parquet"
    )
    with pytest.raises(DataError, match="'correct'"):
        load_run(fresh)


def test_groups_missing_column(fresh: Path) -> None:
    pd.read_parquet(fresh / "groups.parquet").drop(columns="metric").to_parquet(
        fresh / "groups.parquet"
    )
    with pytest.raises(DataError, match="groups.parquet.*'metric'"):
        load_run(fresh)


def test_unreadable_parquet(fresh: Path) -> None:
    (fresh / "gaps.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="gaps.parquet"):
        load_run(fresh)


def test_gallery_without_maps(fresh: Path) -> None:
    (fresh / "maps.npz").unlink()
    with pytest.raises(RunError, match="maps.npz"):
        load_run(fresh)


def test_gallery_key_missing_from_maps(fresh: Path) -> None:
    with np.load(fresh / "maps.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "image/g0"}
    np.savez(fresh / "maps.npz", **arrays)
    with pytest.raises(DataError, match="image/g0"):
        load_run(fresh)


def test_gallery_item_without_key(fresh: Path) -> None:
    gallery = json.loads((fresh / "gallery.json").read_text())
    del gallery["items"][2]["key"]
    (fresh / "gallery.json").write_text(json.dumps(gallery))
    with pytest.raises(DataError, match=r"items\[2\]"):
        load_run(fresh)


def test_only_required_files(tmp_path: Path) -> None:
    path = make_run_folder(tmp_path / "bare", optional=False)
    data = load_run(path)
    assert data.gaps is None and data.gallery is None and data.groups.empty
    assert data.config_text == json.loads((path / "summary.json").read_text())["config"]
    html = render_report(path).read_text()
    # The report computes nothing: without groups.parquet there is no chart of its numbers
    # (no fallback to means of the samples table); missing tables are said to be missing.
    assert 'id="fig-mass"' not in html and 'id="fig-accuracy"' not in html
    assert "Not available in this run: gaps.parquet" in html
    assert "Not available in this run: gallery.json and maps.npz" in html
