"""The documentation site builds without a warning, and its generated reference pages are current."""

import os
import subprocess
import sys

import pytest
from guide import REPO


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason='the docs extra: pip install -e ".[docs]"')
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "predict_array" in api and "Dehaze one 2D image" in api  # mkdocstrings rendered the docstrings


def test_generated_reference_is_current():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_reference
    finally:
        sys.path.pop(0)
    for name, page in make_reference.PAGES.items():
        committed = (REPO / "docs" / "reference" / name).read_text()
        assert committed == page(), f"docs/reference/{name} is out of date: run python scripts/make_reference.py"
