"""The command line: helpful --help, artifact commands, and exit code 2 without a traceback on user errors."""

from __future__ import annotations

import subprocess
import sys

import torch

from spring_core import VirtualTokens


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "spring_cli", *args], capture_output=True, text=True)


def test_help_teaches_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for text in ("demo", "info", "import-spring", "[r1]..[rk]", "examples:"):
        assert text in result.stdout


def test_info_prints_the_manifest(tiny, tmp_path):
    VirtualTokens.random(tiny[0], 3).save(tmp_path / "art")
    result = run_cli("info", str(tmp_path / "art"))
    assert result.returncode == 0, result.stderr
    assert '"kind": "virtual-tokens"' in result.stdout and '"n": 3' in result.stdout


def test_user_errors_exit_2_with_one_line_and_no_traceback(tmp_path):
    result = run_cli("info", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "no spring.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_spring_writes_a_loadable_artifact(tiny_dir, tmp_path):
    torch.save(torch.randn(50, 64), tmp_path / "tokens.pt")
    out = tmp_path / "a"
    result = run_cli("import-spring", str(tmp_path / "tokens.pt"), "--model", str(tiny_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "50 tokens x 64" in result.stdout
    assert VirtualTokens.load(out).n == 50
