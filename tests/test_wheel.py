"""A non-editable install must carry templates/ and case_studies/ (the design card's top-level
folders) inside the package, or `pip install .` users could not render a report."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_templates_and_case_studies(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("bias_audit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "templates").rglob("*.j2"))
    assert templates, "no templates in the source tree"
    for rel in templates:
        assert f"bias_audit/_shipped/{rel}" in names
    shipped_cases = [n for n in names if n.startswith("bias_audit/_shipped/case_studies/")]
    assert any(n.endswith("README.md") for n in shipped_cases)
    assert "bias_audit/py.typed" in names
