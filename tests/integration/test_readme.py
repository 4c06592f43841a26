"""Every Python snippet of the README runs as written (each in a scratch folder, on SmolLM2); the docs pages' run in
test_docs_snippets.py (a file of its own, so the two test workers share them), and the "Serve on vLLM" ones need a
server and run in tests/serving. A snippet in both (the README's quick starts are the guides' first blocks) runs
once, here."""

from __future__ import annotations

import pytest
from readme_blocks import python_blocks, run_snippet, snippet_state  # noqa: F401  (a fixture, used by name)

pytestmark = pytest.mark.integration

BLOCKS = python_blocks(where="readme")


def test_the_readme_and_the_guides_have_the_sections_users_look_for():
    headings = [heading for heading, _ in python_blocks()]
    assert {"spring-rag", "LlamaIndex", "LangChain"} <= set(headings), headings
    assert {"quickstart.md: Python quick start", "concepts.md: Token healing",
            "llamaindex.md: Usage counts",
            "langchain.md: Chains, prompts and documents"} <= set(headings), headings


def test_the_readme_quick_starts_are_the_guides_first_blocks():
    """Each README quick start is also in its guide, word for word (so both stay tested by one run)."""
    from readme_blocks import DOCS, README

    readme = README.read_text(encoding="utf-8")
    for page in ("llamaindex.md", "langchain.md", "serving.md"):
        guide = (DOCS / page).read_text(encoding="utf-8")
        first = guide[guide.index("```python"):]
        first = first[: first.index("\n```\n") + 5]
        assert first in readme, f"docs/{page}'s first Python block differs from the README's quick start"


@pytest.mark.parametrize(("heading", "code"), BLOCKS, ids=[heading for heading, _ in BLOCKS])
def test_snippet_runs(heading, code, tmp_path, monkeypatch, capsys, snippet_state):  # noqa: F811
    run_snippet(heading, code, tmp_path, monkeypatch, capsys)
