"""Every Python snippet of the README runs as written (each in a scratch folder, on SmolLM2); the "Serve on vLLM"
ones need a server and run in tests/serving."""

from __future__ import annotations

import pytest
from readme_blocks import python_blocks

pytestmark = pytest.mark.integration

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
