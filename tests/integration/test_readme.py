"""Every Python snippet of the README runs as written (each in a scratch folder, on SmolLM2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[tuple[str, str]]:
    """``(section heading, code)`` for each fenced Python block."""
    blocks, heading = [], "top"
    # Every fenced block is one piece, so a comment line inside a bash block is never taken for a heading.
    for piece in re.split(r"(^#+ [^\n]*$|^```\w*\n.*?^```)", README.read_text(encoding="utf-8"), flags=re.M | re.S):
        if piece.startswith("#"):
            heading = piece.lstrip("#").strip()
        elif piece.startswith("```python"):
            blocks.append((heading, piece[len("```python\n"):-3]))
    return blocks


BLOCKS = python_blocks()


def test_the_readme_has_the_sections_users_look_for():
    headings = [heading for heading, _ in BLOCKS]
    assert {"Python quick start", "Use with LlamaIndex", "Use with LangChain"} <= set(headings)


@pytest.mark.parametrize(("heading", "code"), BLOCKS, ids=[heading for heading, _ in BLOCKS])
def test_snippet_runs(heading, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, f"README.md ({heading})", "exec"), namespace)  # our own documentation
    printed = capsys.readouterr().out
    assert printed.strip(), f"the '{heading}' snippet printed nothing"
    if heading == "Python quick start":
        assert (tmp_path / "my-tokens" / "spring.json").is_file()
        out = namespace["out"]
        assert out.usage.virtual_tokens == 10 and out.text and out.text in printed
        assert namespace["prompt"].k == 10 and "[r1]" in printed and "[r10]" in printed
