"""Smoke tests: the LlamaIndex Workflow and LangChain 1.x agent recipes run as scripts and show the block."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook"
QUESTION = "Which Florida city has the biggest population?"


def run_recipe(name: str, *args: str, cwd: Path) -> list[str]:
    result = subprocess.run([sys.executable, str(COOKBOOK / name), "--question", QUESTION, *args],
                            capture_output=True, text=True, timeout=900, cwd=cwd,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for warning in ("looks like a RAG prompt", "found by its label"):  # the structured ways warn about nothing
        assert warning not in result.stderr, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_the_workflow_recipe_answers_with_and_without_the_block(tmp_path):
    lines = run_recipe("llamaindex_workflow.py", "--max-new-tokens", "12", cwd=tmp_path)
    assert f"Q: {QUESTION}" in lines
    answers = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in lines if "k = " in line}
    assert set(answers) == {"k = 0", "k = 50"} and all(answers.values()), lines


def test_the_agent_recipe_counts_the_virtual_tokens(tmp_path):
    lines = run_recipe("langchain_agent.py", "--max-tokens", "12", cwd=tmp_path)
    assert f"Q: {QUESTION}" in lines
    assert any(line.strip().startswith("k = 0  ( 0 virtual tokens):") for line in lines), lines
    assert any(line.strip().startswith("tokens (50 virtual tokens):") for line in lines), lines
