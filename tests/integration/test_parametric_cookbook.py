"""Smoke test: the parametric RAG recipe augments, encodes and answers with icl, prag and combine on SmolLM2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

RECIPE = Path(__file__).resolve().parents[2] / "cookbook" / "parametric_rag.py"


def test_parametric_cookbook_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(RECIPE), "--topics", "1", "--docs-per-topic", "2", "--questions", "1",
         "--max-tokens", "8", "--out", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("augmented 2 of 2 documents (cloze")
    assert lines[1].startswith("encoded 2 adapters")
    assert sum(line.startswith("Q: ") for line in lines) == 1
    for mode in ("icl", "prag", "combine"):
        assert any(line.strip().startswith(f"{mode}:") for line in lines), result.stdout
    assert (tmp_path / "work" / "adapters" / "spring.json").is_file()
