"""`spring-rag train` under a real `accelerate launch` with 2 CPU processes (gloo on 127.0.0.1).

Two processes with micro-batches of 2 must give the run one process gives with the same global batch of 4
(2 micro-batches accumulated), only the main process may write the log, checkpoints and artifact, and a 2-process
run resumed from its checkpoint must end where the uninterrupted one ended.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from cpu_launch import run_spring_rag
from safetensors.torch import load_file
from test_trainer import write_qa

from spring_core.artifacts.manifest import MANIFEST_NAME
from spring_train.checkpoint import load_state
from spring_train.config import ConfigError, TrainConfig
from spring_train.trainer import train

pytestmark = pytest.mark.distributed

# 13 rows in batches of 4: every 4th step has a single example, so one of the two processes has none.
ROWS, STEPS = 13, 6
# lr 1e-2: the tables move by ~0.1 while 1 and 2 processes differ by ~1e-6 (padding differs between their
# micro-batches; Adam amplifies rounding more at higher lr: 9e-6 at lr 5e-2).
SETTINGS = dict(n=6, lr=1e-2, batch_size=4, grad_accum=2, epochs=1.5, precision="fp32", checkpoint_every=2)


def launch(tiny_dir: Path, data: Path, out: Path, home: Path, *extra: str) -> subprocess.CompletedProcess:
    """`spring-rag train` under `accelerate launch --multi_gpu --num_processes 2` on CPUs (gloo)."""
    args = [f"--{key.replace('_', '-')}={value}" for key, value in SETTINGS.items()]
    return run_spring_rag(2, home, "train", "--model", str(tiny_dir), "--data", str(data), "--out", str(out),
                          "--quiet", *args, *extra)


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def table(out: Path) -> torch.Tensor:
    return load_file(out / "tokens.safetensors")["tokens"]


def test_two_processes_match_one_and_resume_exactly(tiny_dir, tmp_path):
    data = write_qa(tmp_path / "qa.jsonl", count=ROWS)
    single = train(TrainConfig(model=str(tiny_dir), data=[str(data)], out=str(tmp_path / "one"), **SETTINGS),
                   show_progress=False)
    assert single.steps == STEPS

    two = tmp_path / "two"
    done = launch(tiny_dir, data, two, tmp_path / "hf", "--keep-checkpoints")
    assert done.stdout.count("wrote ") == 1, done.stdout  # one summary line, not one per process

    # The same run: the trained table and every step's loss and token count.
    assert torch.allclose(table(two), table(tmp_path / "one"), atol=1e-5), \
        (table(two) - table(tmp_path / "one")).abs().max()
    log, reference = log_of(two), log_of(tmp_path / "one")
    assert [e["step"] for e in log] == list(range(1, STEPS + 1))  # each step once: only the main process logs
    assert [e["loss"] for e in log] == pytest.approx([e["loss"] for e in reference], abs=2e-5)
    assert [(e["k"], e["tokens"]) for e in log] == [(e["k"], e["tokens"]) for e in reference]
    manifest = json.loads((two / MANIFEST_NAME).read_text())
    assert manifest["training"]["processes"] == 2 and single_processes(tmp_path / "one") == 1
    checkpoints = sorted(p.name for p in (two / "checkpoints").iterdir())
    assert checkpoints == ["step-0000002", "step-0000004"]  # one set, no scratch folder of a second writer
    (at_step_2,) = load_state(two / "checkpoints" / "step-0000002")["trainable"].values()
    assert (at_step_2 - table(two)).abs().max() > 1e-2  # steps 3-6 trained: the comparisons below can fail

    # A 2-process run that died after its step-2 checkpoint (the log already holds steps 3 and 4), resumed.
    resumed = tmp_path / "resumed"
    shutil.copytree(two / "checkpoints" / "step-0000002", resumed / "checkpoints" / "step-0000002")
    lines = (two / "train_log.jsonl").read_text().splitlines()
    (resumed / "train_log.jsonl").write_text("".join(f"{line}\n" for line in lines[:4]))
    launch(tiny_dir, data, resumed, tmp_path / "hf", "--resume")
    assert torch.equal(table(resumed), table(two))
    assert [e["step"] for e in log_of(resumed)] == list(range(1, STEPS + 1))
    assert [e["loss"] for e in log_of(resumed)] == [e["loss"] for e in log]
    assert json.loads((resumed / MANIFEST_NAME).read_text())["training"]["processes"] == 2
    assert not (resumed / "checkpoints").exists()


def single_processes(out: Path) -> int:
    return json.loads((out / MANIFEST_NAME).read_text())["training"]["processes"]


def test_processes_accelerate_did_not_join_are_refused(tiny_dir, tmp_path, monkeypatch):
    # What torchrun on a CPU without ACCELERATE_USE_CPU gives: WORLD_SIZE=2, yet each process on its own.
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    data = write_qa(tmp_path / "qa.jsonl", count=4)
    with pytest.raises(ConfigError, match="launched as 2 processes, but Accelerate set up 1.*ACCELERATE_USE_CPU"):
        train(TrainConfig(model=str(tiny_dir), data=[str(data)], out=str(tmp_path / "out"), **SETTINGS),
              show_progress=False)
    assert not (tmp_path / "out").exists()
