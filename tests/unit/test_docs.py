"""The documentation site builds in strict mode: a broken link, a missing page in the nav, an API reference
entry that names nothing, or a results file the generator cannot read fails the suite (and so CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("mkdocs", reason="the docs need the dev extra (mkdocs, mkdocs-material, mkdocstrings)")


def test_the_docs_build_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-5000:]
    # the generated parts are there: results pages with the plot, and the API reference from the docstrings
    assert (site / "results" / "quality" / "index.html").is_file()
    assert (site / "results" / "quality" / "em_f1_vs_k.png").is_file()
    reference = (site / "reference" / "spring_core" / "index.html").read_text(encoding="utf-8")
    assert 'id="spring_core.model.spring_model.SpringModel"' in reference
    families = (site / "model-families" / "index.html").read_text(encoding="utf-8")
    assert "Gemma 3 (text)" in families  # the README's generated table, taken in at build time
