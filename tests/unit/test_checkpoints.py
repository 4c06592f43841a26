"""Checkpoints hold data only (safetensors + JSON): no code runs on --resume, resume stays exact, data are pinned."""

from __future__ import annotations

import json
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import config, write_qa

from spring_cli import main
from spring_core import VirtualTokens
from spring_core.errors import DataError
from spring_train.checkpoint import CheckpointError, load_state, save_state
from spring_train.config import ConfigError
from spring_train.data import parse_source_spec
from spring_train.trainer import TrainingInterrupted, train

PACKAGE_ROOTS = [Path(__file__).parents[2] / name for name in ("spring_core", "training", "integrations")]


def stop_at(step: int):
    def callback(record):
        if record["step"] == step:
            raise KeyboardInterrupt
    return callback


def test_state_round_trips_every_type_a_resume_needs(tmp_path):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1e-3)
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
    optimizer.step()
    state = {"rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
             "optimizer": optimizer.state_dict(), "inf": float("inf"), "nested": [(1, "a"), {"k": None}]}
    save_state(tmp_path, state)
    back = load_state(tmp_path)
    assert back["rng"]["python"] == state["rng"]["python"]
    assert np.array_equal(back["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert back["rng"]["numpy"][1].dtype == np.uint32 and back["rng"]["numpy"][2:] == state["rng"]["numpy"][2:]
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    assert list(back["optimizer"]["state"]) == [0]  # an int key stays an int
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["inf"] == float("inf") and back["nested"] == [(1, "a"), {"k": None}]
    json.loads((tmp_path / "state.json").read_text())  # strict JSON (no NaN/Infinity literals)


def test_no_torch_load_without_weights_only_in_the_package():
    offending = []
    for root in PACKAGE_ROOTS:
        for path in root.rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for match in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text):
                if "weights_only=True" not in match.group(0):
                    offending.append(f"{path.name}: {match.group(0)}")
            if re.search(r"\bpickle\.loads?\(|\bdill\.|joblib\.load|allow_pickle=True|\bshelve\.", text):
                offending.append(f"{path.name}: pickle")
    assert offending == []


def test_a_pickle_planted_as_a_checkpoint_never_runs(tiny_dir, tmp_path):
    qa = write_qa(tmp_path / "qa.jsonl")
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(config(tiny_dir, qa, out), show_progress=False, on_step=stop_at(2))
    proof = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (proof,))

    planted = out / "checkpoints" / "step-0000004"
    planted.mkdir()
    (planted / "trainer_state.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ConfigError, match="pickle"):
        train(config(tiny_dir, qa, out), resume=True, show_progress=False)
    assert not proof.exists()
    # The same pickle as state.json, or a damaged safetensors file: a clean error, nothing runs.
    (planted / "state.json").write_bytes(pickle.dumps(Payload()))
    (planted / "tensors.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="state.json"):
        train(config(tiny_dir, qa, out), resume=True, show_progress=False)
    assert not proof.exists()


def test_resume_is_exact_records_all_seconds_and_refuses_changed_data(tiny_dir, tmp_path, capsys):
    qa = write_qa(tmp_path / "qa.jsonl")
    straight = train(config(tiny_dir, qa, tmp_path / "straight", epochs=2), show_progress=False)
    out = tmp_path / "resumed"
    with pytest.raises(TrainingInterrupted):
        train(config(tiny_dir, qa, out, epochs=2), show_progress=False, on_step=stop_at(5))
    checkpoint = out / "checkpoints" / "step-0000005"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state.json", "tensors.safetensors"]
    seconds_before = json.loads((checkpoint / "state.json").read_text())["seconds"]
    assert seconds_before > 0

    original = qa.read_bytes()
    qa.write_bytes(original.replace(b"Paris", b"Lyon"))
    args = ["train", "--model", str(tiny_dir), "--data", str(qa), "--out", str(out), "--n", "6", "--lr", "5e-2",
            "--batch-size", "4", "--epochs", "2", "--precision", "fp32", "--checkpoint-every", "2", "--resume",
            "--quiet"]
    capsys.readouterr()
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "qa.jsonl changed" in error[0] and "--allow-data-change" in error[0]

    qa.write_bytes(original)
    resumed = train(config(tiny_dir, qa, out, epochs=2), resume=True, show_progress=False)
    assert torch.equal(VirtualTokens.load(out).weight, VirtualTokens.load(tmp_path / "straight").weight)
    recorded = VirtualTokens.load(out).manifest["training"]["seconds"]
    assert recorded >= round(seconds_before, 1) and resumed.seconds > seconds_before
    assert straight.steps == resumed.steps == 8


def test_allow_data_change_resumes_on_the_new_data_and_records_it(tiny_dir, tmp_path):
    qa = write_qa(tmp_path / "qa.jsonl")
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(config(tiny_dir, qa, out), show_progress=False, on_step=stop_at(2))
    qa.write_text(qa.read_text().replace("Paris", "Lyon"))
    train(config(tiny_dir, qa, out), resume=True, show_progress=False, allow_data_change=True)
    recorded = VirtualTokens.load(out).manifest["data_sources"][0]
    assert recorded["sha256"] == __import__("hashlib").sha256(qa.read_bytes()).hexdigest()


def _with_passage(tmp_path: Path, text: str) -> Path:
    qa = write_qa(tmp_path / "qa.jsonl", count=8)
    row = {"id": "odd", "question": "What is it?", "answers": ["x"], "passages": [text]}
    with qa.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    return qa


def test_a_prompt_longer_than_the_context_stops_before_step_one_naming_file_and_row(tiny_dir, tmp_path):
    qa = _with_passage(tmp_path, "river mountain " * 3000)  # ~6000 tokens; the tiny model reads 4096
    steps = []
    with pytest.raises(DataError, match=r"qa.jsonl: row 'odd': its prompt .* longer than the model's context"):
        train(config(tiny_dir, qa, tmp_path / "out"), show_progress=False, on_step=steps.append)
    assert steps == [] and not (tmp_path / "out" / "checkpoints").exists()


def test_marker_like_text_in_a_passage_trains_as_plain_text(tiny_dir, tmp_path):
    # Issue #14's rule: markers in content are plain characters. Before it, this row passed validation and then
    # stopped training at step 2 with an error that named no file or row.
    qa = _with_passage(tmp_path, "See [r1] and [r3] in the table.")
    steps = []
    assert train(config(tiny_dir, qa, tmp_path / "out"), show_progress=False, on_step=steps.append).steps == 3
    assert [record["step"] for record in steps] == [1, 2, 3]


@pytest.mark.parametrize("weight", ["inf", "1e300", "nan", "-1", "0"])
def test_data_weights_outside_the_range_are_refused(weight):
    with pytest.raises(DataError, match=r"the weight after ':' must be a positive number of at most 1000"):
        parse_source_spec(f"qa.jsonl:{weight}")
