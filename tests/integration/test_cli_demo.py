"""The README's main command, ``spring-rag demo``, end to end in a subprocess, and a CLI user error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spring_core.data import demo_qa_path, read_qa

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def spring_rag(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the ``spring-rag`` command line as ``python -m spring_cli`` with the current environment."""
    return subprocess.run([sys.executable, "-m", "spring_cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_demo_answers_one_question_with_and_without_tokens():
    result = spring_rag("demo", "--count", "1", "--max-new-tokens", "8")
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    first = read_qa(demo_qa_path())[0]  # with --count 1 the demo answers the first bundled question
    assert first["question"] in result.stdout
    assert "k = 0" in result.stdout
    assert "k = 50" in result.stdout
    assert "Traceback" not in result.stderr


def test_info_on_a_folder_that_is_not_an_artifact(tmp_path):
    (tmp_path / "notes.txt").write_text("not an artifact\n", encoding="utf-8")
    result = spring_rag("info", str(tmp_path), timeout=300)
    assert result.returncode == 2, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert any(line.startswith("error:") for line in result.stderr.splitlines()), result.stderr
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout
