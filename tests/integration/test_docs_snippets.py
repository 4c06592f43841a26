"""Every Python snippet of the docs pages (docs/**/*.md) runs as written, each in a scratch folder, on SmolLM2 (the
ones also in the README run in test_readme.py; the "Serve on vLLM" ones need a server and run in tests/serving)."""

from __future__ import annotations

import pytest
from readme_blocks import python_blocks, run_snippet, snippet_state  # noqa: F401  (a fixture, used by name)

pytestmark = pytest.mark.integration

BLOCKS = python_blocks(where="docs")


@pytest.mark.parametrize(("heading", "code"), BLOCKS, ids=[heading for heading, _ in BLOCKS])
def test_docs_snippet_runs(heading, code, tmp_path, monkeypatch, capsys, snippet_state):  # noqa: F811
    run_snippet(heading, code, tmp_path, monkeypatch, capsys)
