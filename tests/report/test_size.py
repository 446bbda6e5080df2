"""The report stays small for a large audit: charts aggregate, the gallery is capped."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import plotly.offline

from bias_audit.report import render_report

from .runfolder import make_run_folder

LIMIT = 20 * 1024 * 1024


def test_ten_thousand_images_two_models(tmp_path: Path) -> None:
    path = make_run_folder(
        tmp_path / "big", n_per_cell=2500, small=None, gallery_per_cell=20, image_size=224
    )
    samples = pd.read_parquet(path / "samples.parquet")
    assert len(samples) == 20_000 and samples["id"].nunique() == 10_000
    # 20 gallery items per cell on offer: the total cap (60), not the per-cell one, binds.
    html = render_report(path, max_per_cell=20).read_text()
    size = len(html.encode("utf-8"))
    assert size <= LIMIT, f"{size / 1e6:.1f} MB"
    assert html.count('<figure class="sample">') == 60
    # Everything but plotly.js and the pictures is small: no per-image chart points.
    rest = html.replace(plotly.offline.get_plotlyjs(), "")
    rest = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", rest)
    assert len(rest) < 1_000_000, len(rest)
    thumbs = re.findall(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", html)
    assert max(len(t) for t in thumbs) < 60_000
