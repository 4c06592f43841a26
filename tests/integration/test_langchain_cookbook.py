"""Smoke test: the LangChain cookbook recipe runs as a script and prints answers with and without tokens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

RECIPE = Path(__file__).resolve().parents[2] / "cookbook" / "langchain_rag_chain.py"


def test_langchain_cookbook_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(RECIPE), "--questions", "2", "--max-tokens", "12", "--passages", "2"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "indexed 222 passages (dense: MiniLM + chromadb)"
    questions = [line for line in lines if line.startswith("Q: ")]
    assert len(questions) == 2
    for label in ("k=0:", "k=10:"):
        answers = [line.split(label, 1)[1].strip() for line in lines if line.strip().startswith(label)]
        assert len(answers) == 2 and all(answers), result.stdout
