"""The README's Python quick start runs as written (in a scratch folder, on SmolLM2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def test_quick_start_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "the README has no Python quick start"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md quick start", "exec"), namespace)  # noqa: S102 - our own documentation
    assert (tmp_path / "my-tokens" / "spring.json").is_file()
    out = namespace["out"]
    assert out.usage.virtual_tokens == 10 and out.text
    assert "[r1]" in namespace["prompt"] and "[r10]" in namespace["prompt"]
    assert out.text in capsys.readouterr().out
