"""The command line: helpful --help, artifact commands, and exit code 2 without a traceback on user errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from spring_cli import main
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


def one_error_line(code: int, stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in stderr and len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize("count", ["0", "-2"])
def test_demo_refuses_a_count_below_one(tiny_dir, count, capsys):
    code = main(["demo", "--model", str(tiny_dir), "--count", count, "--max-new-tokens", "1"])
    captured = capsys.readouterr()
    assert "count must be an integer >= 1" in one_error_line(code, captured.err)
    assert "Q:" not in captured.out  # not a single question answered (-2 answered all but the last two)


def test_demo_refuses_an_explicit_k_above_n_and_fits_the_default_to_n(tiny, tiny_dir, tmp_path, capsys):
    VirtualTokens.random(tiny[0], 3, tokenizer=tiny[1]).save(tmp_path / "art")
    argv = ["demo", "--model", str(tiny_dir), "--tokens", str(tmp_path / "art"), "--count", "1",
            "--max-new-tokens", "1"]
    code = main([*argv, "--k", "100"])
    captured = capsys.readouterr()
    assert "k = 100 is out of range: this model has n = 3" in one_error_line(code, captured.err)
    assert "Q:" not in captured.out
    assert main([*argv, "--k", "2"]) == 0 and "k = 2 ([r1]..[r2])" in capsys.readouterr().out
    assert main(argv) == 0 and "k = 3 ([r1]..[r3])" in capsys.readouterr().out  # the default, 50, fits n
