"""The fenced Python blocks of the README and of the docs pages (``docs/**/*.md``), for the tests that run them
(tests/integration/test_readme.py, and tests/serving for the snippets that need a vLLM server).

A block that appears word for word in more than one page (the README's quick starts are the guides' first
blocks) is collected once, under the first page that holds it: the README, then the docs pages in name order.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SERVER_SECTIONS = {"Serve on vLLM"}  # their snippets need a running server: tests/serving runs them


def pages() -> list[Path]:
    """The README, then every docs page (the generated results and reference pages have no Python blocks)."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def _label(page: Path, heading: str) -> str:
    return heading if page == README else f"{page.relative_to(DOCS).as_posix()}: {heading}"


def python_blocks(*, server: bool = False, where: str = "all") -> list[tuple[str, str]]:
    """``(section, code)`` for each fenced Python block (``server``: only those that need a vLLM server, else only
    those that do not). ``section`` is the README heading above the block, or ``page.md: heading`` for a docs
    page. ``where``: ``"readme"`` or ``"docs"`` keeps the blocks first found there (two test files, so the two
    test workers share them), ``"all"`` keeps all."""
    blocks: list[tuple[str, str]] = []
    seen: set[str] = set()
    for page in pages():
        heading = "top"
        # Every fenced block is one piece, so a comment line inside a bash block is never taken for a heading.
        text = page.read_text(encoding="utf-8")
        for piece in re.split(r"(^#+ [^\n]*$|^```\w*\n.*?^```)", text, flags=re.M | re.S):
            if piece.startswith("#"):
                heading = piece.lstrip("#").strip()
            elif piece.startswith("```python") and (heading in SERVER_SECTIONS) == server:
                code = piece[len("```python\n"):-3]
                if code in seen:
                    continue
                seen.add(code)
                label, n = _label(page, heading), 2
                while any(label == other for other, _ in blocks):
                    label, n = f"{_label(page, heading)} ({n})", n + 1
                if where == "all" or (where == "readme") == (page == README):
                    blocks.append((label, code))
    return blocks


@pytest.fixture()
def snippet_state():
    """Undo what a snippet leaves in the process: ``Settings.llm``, the LlamaIndex instrumentation handlers it
    defined itself (those of the library, e.g. the one that puts a query's usage on its Response, stay), and
    chromadb's clients, which it keeps per path string (every snippet's relative ``sample-store/`` is another
    folder)."""
    import sys

    from chromadb.api.client import SharedSystemClient
    from llama_index.core import Settings
    from llama_index.core.instrumentation import get_dispatcher

    root, llm = get_dispatcher(), Settings._llm
    handlers = list(root.event_handlers)
    SharedSystemClient.clear_system_cache()
    yield
    root.event_handlers[:] = handlers + [handler for handler in root.event_handlers if handler not in handlers
                                         and type(handler).__module__ in sys.modules
                                         and type(handler).__module__ != "builtins"]
    Settings._llm = llm
    SharedSystemClient.clear_system_cache()


def run_snippet(heading, code, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, heading, "exec"), namespace)  # our own documentation
    printed = capsys.readouterr().out
    if "print(" in code:
        assert printed.strip(), f"the '{heading}' snippet printed nothing"
    if heading == "quickstart.md: Python quick start":
        assert (tmp_path / "my-tokens" / "spring.json").is_file()
        out = namespace["out"]
        assert out.usage.virtual_tokens == 10 and out.text and out.text in printed
        assert namespace["prompt"].k == 10 and "[r1]" in printed and "[r10]" in printed
    if heading == "llamaindex.md: Usage counts":
        assert "'virtual_tokens': 10" in printed
