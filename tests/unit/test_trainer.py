"""The trainer on the tiny Llama: what trains, what stays frozen, exact resume, data checks, every method."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import weights_digest

from spring_cli import main
from spring_core import ModelMismatchError, SpringModel, VirtualTokens
from spring_core.errors import DataError
from spring_core.model.loading import load_model
from spring_train.adapters import load_trained
from spring_train.batching import answer_loss_sum, build_example, collate
from spring_train.checkpoint import load_state
from spring_train.config import ConfigError, TrainConfig
from spring_train.data import EpochPlan, load_sources, parse_source_spec
from spring_train.methods import build_target
from spring_train.trainer import TrainingDiverged, TrainingInterrupted, sample_k, train

FACTS = [("Paris", "France"), ("Tokyo", "Japan"), ("Rome", "Italy"), ("Berlin", "Germany"), ("Madrid", "Spain"),
         ("Lisbon", "Portugal"), ("Vienna", "Austria"), ("Oslo", "Norway")]


def write_qa(path: Path, *, with_passages: bool = True, count: int = 16) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            city, country = FACTS[i % len(FACTS)]
            row = {"id": f"q{i}", "question": f"What is the capital of {country}?", "answers": [city]}
            if with_passages:
                row["passages"] = [{"title": country, "text": f"The capital of {country} is {city}."},
                                   "The Eiffel Tower is in Paris, France."]
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture()
def qa(tmp_path) -> Path:
    return write_qa(tmp_path / "qa.jsonl")


def config(tiny_dir, qa, out, **overrides) -> TrainConfig:
    settings = dict(model=str(tiny_dir), data=[str(qa)], out=str(out), n=6, lr=5e-2, batch_size=4, epochs=1,
                    precision="fp32", checkpoint_every=2)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_spring_trains_only_the_token_table_and_keeps_the_base_model_exact(tiny, tiny_dir, qa, tmp_path):
    model, tokenizer = load_model(str(tiny_dir))
    target = build_target(config(tiny_dir, qa, tmp_path / "x"), model, tokenizer)
    assert target.trainable_count() == 6 * model.config.hidden_size
    assert not any(p.requires_grad for p in model.parameters())

    result = train(config(tiny_dir, qa, tmp_path / "art", epochs=6), show_progress=False)
    log = [json.loads(line) for line in (tmp_path / "art" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == result.steps == 24
    assert all(1 <= entry["k"] <= 6 for entry in log)
    assert np.mean([e["loss"] for e in log[-6:]]) < np.mean([e["loss"] for e in log[:6]])

    trained = VirtualTokens.load(tmp_path / "art", model=tiny[0])
    initial = VirtualTokens.from_text(tiny[0], n=6, tokenizer=tiny[1])
    assert not torch.equal(trained.weight, initial.weight)
    manifest = trained.manifest
    assert manifest["training"]["trainable_parameters"] == 6 * 64 and manifest["training"]["out"] is None
    assert manifest["data_sources"][0]["file"] == "qa.jsonl" and manifest["data_sources"][0]["rows"] == 16
    assert "accelerate" in manifest["library_versions"]
    assert not (tmp_path / "art" / "checkpoints").exists()

    digest = weights_digest(tiny[0])
    sm = SpringModel(tiny[0], tiny[1], trained)
    prompt = "[1] The capital of Japan is Tokyo.\n\nQuestion: What is the capital of Japan?\nAnswer:"
    with torch.inference_mode():
        base_logits = tiny[0](**tiny[1](prompt, return_tensors="pt")).logits
    assert torch.equal(sm.logits(prompt), base_logits)
    assert weights_digest(tiny[0]) == digest


def test_answer_only_logits_give_the_same_loss_as_full_logits(tiny):
    model, tokenizer = tiny
    sm = SpringModel(model, tokenizer, VirtualTokens.random(model, 4, tokenizer=tokenizer))
    examples = [build_example(sm, question="What is the capital of Italy?", passages=["Rome is in Italy."],
                              answer="Rome", k=3),
                build_example(sm, question="Capital of Norway?", passages=["Oslo is the capital of Norway."],
                              answer="Oslo city", k=1)]
    batch = collate(examples, sm.pad_token_id)
    assert batch.labels.shape[1] == max(e.answer_length for e in examples)
    with torch.no_grad():
        embeds = sm.embed(batch.input_ids)
        kept = model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                     logits_to_keep=batch.labels.shape[1] + 1).logits
        full = model(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
    # Reference: shift every position, mask everything except the answer tokens.
    width = batch.input_ids.shape[1]
    reference_labels = torch.full_like(batch.input_ids, -100)
    for row, example in enumerate(examples):
        reference_labels[row, width - example.answer_length:] = batch.input_ids[row, width - example.answer_length:]
    reference = torch.nn.functional.cross_entropy(full[:, :-1].reshape(-1, full.shape[-1]),
                                                  reference_labels[:, 1:].reshape(-1), reduction="sum")
    assert torch.allclose(answer_loss_sum(kept, batch.labels), reference, atol=1e-4)
    # The prompt part is exactly what inference encodes.
    prompt_ids = sm.encode(sm.prompt_parts("What is the capital of Italy?", ["Rome is in Italy."], 3))
    assert examples[0].input_ids[:len(prompt_ids)] == prompt_ids


def test_interrupted_run_resumes_exactly(tiny_dir, qa, tmp_path):
    straight = train(config(tiny_dir, qa, tmp_path / "straight", epochs=2), show_progress=False)

    def stop_at_five(record):
        if record["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(config(tiny_dir, qa, tmp_path / "resumed", epochs=2), show_progress=False, on_step=stop_at_five)
    assert (tmp_path / "resumed" / "checkpoints" / "step-0000005").is_dir()
    assert not (tmp_path / "resumed" / "spring.json").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train(config(tiny_dir, qa, tmp_path / "resumed", epochs=2), show_progress=False)
    with pytest.raises(ConfigError, match="lr"):
        train(config(tiny_dir, qa, tmp_path / "resumed", epochs=2, lr=1e-3), resume=True, show_progress=False)

    resumed = train(config(tiny_dir, qa, tmp_path / "resumed", epochs=2), resume=True, show_progress=False)
    assert resumed.steps == straight.steps == 8
    a = VirtualTokens.load(tmp_path / "straight").weight
    b = VirtualTokens.load(tmp_path / "resumed").weight
    assert torch.equal(a, b)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    with pytest.raises(ConfigError, match="already holds a finished artifact"):
        train(config(tiny_dir, qa, tmp_path / "resumed"), show_progress=False)


def test_data_weights_and_seeded_epoch_order(tmp_path):
    a = write_qa(tmp_path / "a.jsonl", count=10)
    b = write_qa(tmp_path / "b.jsonl", count=8)
    assert parse_source_spec(f"{a}:0.5") == (a, 0.5)
    assert parse_source_spec(str(a)) == (a, 1.0)
    with pytest.raises(DataError, match="positive"):
        parse_source_spec(f"{a}:0")
    plan = EpochPlan(load_sources([f"{a}:2", f"{b}:0.5"]), seed=1)
    epoch = plan.epoch(0)
    assert len(epoch) == plan.size == 2 * 10 + 4
    assert sum(1 for source, _ in epoch if source == 0) == 20
    assert epoch == EpochPlan(load_sources([f"{a}:2", f"{b}:0.5"]), seed=1).epoch(0)
    assert epoch != plan.epoch(1)


def test_bad_rows_and_missing_passages_stop_before_training(tiny_dir, qa, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(qa.read_text() + '{"id": "x", "question": "Q?", "answers": []}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:17: field 'answers'"):
        train(config(tiny_dir, bad, tmp_path / "o1"), show_progress=False)
    bare = write_qa(tmp_path / "bare.jsonl", with_passages=False)
    with pytest.raises(DataError, match="row 'q0' has no passages.*--corpus"):
        train(config(tiny_dir, bare, tmp_path / "o2"), show_progress=False)
    assert not (tmp_path / "o1" / "spring.json").exists()


def test_passages_can_be_retrieved_from_a_corpus(tiny_dir, tmp_path):
    bare = write_qa(tmp_path / "bare.jsonl", with_passages=False)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"p{i}", "title": country, "text": f"The capital of {country} is "
                                          f"{city}."}) + "\n" for i, (city, country) in enumerate(FACTS)))
    train(config(tiny_dir, bare, tmp_path / "art", corpus=str(corpus), max_steps=2), show_progress=False)
    manifest = VirtualTokens.load(tmp_path / "art").manifest
    assert {"corpus": "corpus.jsonl", "retriever": "bm25", "passages": 5} in manifest["data_sources"]
    assert not (tmp_path / "art" / "cache").exists()


def test_k_distributions_cover_one_to_n():
    uniform = TrainConfig(data=["x"], out="o", n=50)
    log_uniform = TrainConfig(data=["x"], out="o", n=50, k_distribution="log-uniform")
    rng = np.random.default_rng(0)
    draws_u = [sample_k(uniform, rng) for _ in range(3000)]
    draws_l = [sample_k(log_uniform, rng) for _ in range(3000)]
    assert min(draws_u) == 1 and max(draws_u) == 50 and min(draws_l) == 1 and max(draws_l) == 50
    assert draws_l.count(1) > 3 * draws_u.count(1)


def test_config_errors_are_actionable():
    with pytest.raises(ConfigError, match="--base-lora"):
        TrainConfig(method="spring+", data=["x"], out="o")
    with pytest.raises(ConfigError, match="multiple of --grad-accum"):
        TrainConfig(data=["x"], out="o", batch_size=6, grad_accum=4)
    with pytest.raises(ConfigError, match="unknown method"):
        TrainConfig(method="adapter", data=["x"], out="o")


def test_lora_prefix_and_spring_plus_artifacts(tiny, tiny_dir, qa, tmp_path):
    train(config(tiny_dir, qa, tmp_path / "lora", method="lora", lora_rank=4, max_steps=3, lr=1e-2),
          show_progress=False)
    train(config(tiny_dir, qa, tmp_path / "prefix", method="prefix", prefix_tokens=4, max_steps=2),
          show_progress=False)
    train(config(tiny_dir, qa, tmp_path / "plus", method="spring+", base_lora=str(tmp_path / "lora"), max_steps=2),
          show_progress=False)
    assert json.loads((tmp_path / "lora" / "spring.json").read_text())["kind"] == "lora-adapter"
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()

    prompt = "[1] The capital of Japan is Tokyo.\n\nQuestion: What is the capital of Japan?\nAnswer:"
    base = SpringModel(*tiny)
    lora = load_trained(str(tiny_dir), tmp_path / "lora")
    prefix = load_trained(str(tiny_dir), tmp_path / "prefix")
    plus = load_trained(str(tiny_dir), tmp_path / "plus")
    assert plus.n == 6 and lora.n == 0
    assert not torch.equal(lora.logits(prompt), base.logits(prompt))
    assert torch.equal(plus.logits(prompt), lora.logits(prompt))  # no markers: exactly the LoRA model
    assert prefix.generate_from_prompt(prompt, max_new_tokens=3).usage.completion_tokens >= 1

    with pytest.raises(ModelMismatchError, match="SPRING"):
        SpringModel(tiny[0], tiny[1], tmp_path / "plus")
    other_dir = tmp_path / "other-model"
    from conftest import make_tiny_model

    make_tiny_model(other_dir, tiny[1], seed=7)
    tiny[1].save_pretrained(other_dir)
    with pytest.raises(ModelMismatchError):
        load_trained(str(other_dir), tmp_path / "lora")


def test_cli_train_and_its_errors(tiny_dir, qa, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "spring_cli", *args], capture_output=True, text=True)

    help_text = run("train", "--help").stdout
    for text in ("--method", "spring+", "--resume", "--k-distribution", "examples:", "lr 1e-3"):
        assert text in help_text
    ok = run("train", "--model", str(tiny_dir), "--data", str(qa), "--out", str(tmp_path / "art"), "--n", "4",
             "--max-steps", "2", "--quiet")
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and VirtualTokens.load(tmp_path / "art").n == 4
    bad = run("train", "--model", str(tiny_dir), "--data", str(tmp_path / "missing.jsonl"), "--out",
              str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_warm_start_from_an_artifact(tiny, tiny_dir, qa, tmp_path):
    train(config(tiny_dir, qa, tmp_path / "first", max_steps=2), show_progress=False)
    first = VirtualTokens.load(tmp_path / "first")
    first.save(tmp_path / "first", metrics={"eval": {"squad k=1": {"em": 50.0}}})
    model, tokenizer = load_model(str(tiny_dir))
    target = build_target(config(tiny_dir, qa, tmp_path / "x", init_tokens=str(tmp_path / "first")), model, tokenizer)
    assert torch.equal(target.tokens.weight.detach(), first.weight)
    manifest = target.tokens.manifest
    assert manifest["init"] == {"method": "artifact", "source": "first"}
    # the old tokens' scores and training record describe other tokens: a warm start starts a fresh record
    assert manifest["metrics"] == {} and manifest["training"] == {} and manifest["data_sources"] == []
    with pytest.raises(ConfigError, match="--n 6"):
        build_target(config(tiny_dir, qa, tmp_path / "y", n=3, init_tokens=str(tmp_path / "first")), model,
                     tokenizer)
    with pytest.raises(ConfigError, match="spring or spring\\+"):
        config(tiny_dir, qa, tmp_path / "z", method="lora", init_tokens=str(tmp_path / "first"))


def test_a_diverged_run_fails_keeps_its_checkpoints_and_writes_no_artifact(tiny_dir, qa, tmp_path):
    """Adam moves each entry by about lr per step: with lr 8000 the table passes the loader's limit (1e4) after
    step 1 and not after step 2, so step 1's checkpoint is the healthy one kept."""
    out = tmp_path / "art"
    expected = (r"diverged at step 2 of 8: the token table holds values up to .*No artifact was written; the "
                r"checkpoints up to step-0000001.*lower --lr")
    with pytest.raises(TrainingDiverged, match=expected):
        train(config(tiny_dir, qa, out, lr=8000, warmup_ratio=0, max_steps=8, checkpoint_every=1),
              show_progress=False)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001"]
    assert not (out / "spring.json").exists() and not (out / "tokens.safetensors").exists()
    (table,) = load_state(out / "checkpoints" / "step-0000001")["trainable"].values()
    assert bool(torch.isfinite(table).all()) and float(table.abs().max()) < 1e4


def test_cli_diverged_run_exits_2_without_an_artifact(tiny_dir, qa, tmp_path, capsys):
    out = tmp_path / "art"
    code = main(["train", "--model", str(tiny_dir), "--data", str(qa), "--out", str(out), "--n", "4", "--max-steps",
                 "3", "--batch-size", "2", "--lr", "1e30", "--warmup-ratio", "0", "--checkpoint-every", "1",
                 "--precision", "fp32", "--quiet"])
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in stderr and len(errors) == 1, stderr
    assert "training diverged at step 1 of 3" in errors[0] and "lower --lr" in errors[0]
    assert not (out / "spring.json").exists() and not (out / "tokens.safetensors").exists()
    # Nothing healthy was checkpointed, so the same --out takes a new run.
    assert main(["train", "--model", str(tiny_dir), "--data", str(qa), "--out", str(out), "--n", "4", "--max-steps",
                 "1", "--batch-size", "2", "--lr", "1e-3", "--precision", "fp32", "--quiet"]) == 0
    assert VirtualTokens.load(out).n == 4


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--lr", "inf", "--lr must be a finite positive number"),
    ("--lr", "nan", "--lr must be a finite positive number"),
    ("--epochs", "inf", "--epochs must be a finite positive number"),
    ("--seed", "-1", "--seed must be an integer from 0 to 2**32 - 1"),
    ("--seed", "99999999999999999999999", "--seed must be an integer from 0 to 2**32 - 1"),
    ("--n", "100000000", "--n 100,000,000 is too large: each of these tokens takes a position"),
])
def test_cli_train_refuses_settings_out_of_range(tiny_dir, qa, tmp_path, capsys, flag, value, message):
    out = tmp_path / "art"
    code = main(["train", "--model", str(tiny_dir), "--data", str(qa), "--out", str(out), "--precision", "fp32",
                 "--quiet", flag, value])
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in stderr and len(errors) == 1, stderr
    assert message in errors[0]
    assert not out.exists()
