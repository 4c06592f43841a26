"""The README's fenced Python blocks, for the tests that run them (tests/integration/test_readme.py, and
tests/serving for the snippets that need a vLLM server)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SERVER_SECTIONS = {"Serve on vLLM"}  # its snippets need a running server: tests/serving runs them


def python_blocks(*, server: bool = False) -> list[tuple[str, str]]:
    """``(section heading, code)`` for each fenced Python block (``server``: only those that need a vLLM server,
    else only those that do not)."""
    blocks, heading = [], "top"
    # Every fenced block is one piece, so a comment line inside a bash block is never taken for a heading.
    for piece in re.split(r"(^#+ [^\n]*$|^```\w*\n.*?^```)", README.read_text(encoding="utf-8"), flags=re.M | re.S):
        if piece.startswith("#"):
            heading = piece.lstrip("#").strip()
        elif piece.startswith("```python") and (heading in SERVER_SECTIONS) == server:
            blocks.append((heading, piece[len("```python\n"):-3]))
    return blocks
