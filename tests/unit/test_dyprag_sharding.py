"""Encoding that shards over processes: several writers into one adapter store lose nothing, and `parametrize`
(PRAG, and DyPRAG's --encode) under a real 2-process `accelerate launch` writes the store one process writes, bit
for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cpu_launch import run_spring_rag
from processes import exit_codes

from spring_core.model.loading import load_model
from spring_core.parametric import AdapterStore, LoraSpec
from spring_core.parametric.dyprag import DyPRAG, DyPRAGConfig, ParameterTranslator
from spring_train.sharding import process_share, share

CORPUS = [{"id": f"doc-{i}", "title": f"Title {i}", "text": f"Document {i} says the answer is {i * 7}."}
          for i in range(7)]


def adapter(spec: LoraSpec, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"{name}.lora_{part}": torch.randn(*shape, generator=generator)
            for name, (out_f, in_f) in spec.modules.items() for part, shape in (("A", (2, in_f)), ("B", (out_f, 2)))}


def write_share(folder: str, model_dir: str, index: int) -> None:
    model = load_model(model_dir)[0]  # a model in memory need not pickle (transformers may have hooked it)
    spec = LoraSpec.for_model(model, rank=2, alpha=32)
    store = AdapterStore.open_or_create(folder, model, spec, base_model_name="tiny")
    for i in share(range(12), index, 2):
        store.add({f"doc-{i}": adapter(spec, i)})  # one commit per document: as many races as possible


def test_two_processes_adding_to_one_store_lose_nothing(tiny, tiny_dir, tmp_path):
    model = tiny[0]  # the model tiny_dir holds
    spec = LoraSpec.for_model(model, rank=2, alpha=32)
    folder = str(tmp_path / "store")
    assert exit_codes([(write_share, (folder, str(tiny_dir), i)) for i in (0, 1)], timeout=120) == [0, 0]
    store = AdapterStore.open(tmp_path / "store", model=model)  # every file's SHA-256 checked
    assert sorted(store.ids(), key=lambda d: int(d.split("-")[1])) == [f"doc-{i}" for i in range(12)]
    assert all(torch.equal(store.get(f"doc-{i}")[key], value)
               for i in range(12) for key, value in adapter(spec, i).items())
    assert len(store.manifest["files"]) == 12 + 1  # one shard per add, one index: nothing retired was left behind


def test_process_share_reads_the_launcher_and_refuses_nonsense():
    from spring_train.config import ConfigError

    assert process_share({"RANK": "0", "WORLD_SIZE": "3"}) == (0, 3)
    assert share(CORPUS, 2, 3) == [CORPUS[2], CORPUS[5]]
    for env in ({"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x"}):
        with pytest.raises(ConfigError, match="RANK"):
            process_share(env)


def one_and_two_processes(tmp_path: Path, model, *arguments: str) -> tuple[AdapterStore, AdapterStore]:
    """``spring-rag parametrize ARGUMENTS --out one`` as one process, then ``--out two`` under a 2-process
    ``accelerate launch`` (each on one thread); both stores opened, after checking that each launched process
    encoded its share (4 and 3 of the 7 documents)."""
    for name, processes in (("one", 1), ("two", 2)):
        done = run_spring_rag(processes, tmp_path / "home", "parametrize", *arguments, "--out", str(tmp_path / name),
                              "--quiet")
    assert "4 documents encoded" in done.stdout and "3 documents encoded" in done.stdout, done.stdout
    return AdapterStore.open(tmp_path / "one", model=model), AdapterStore.open(tmp_path / "two", model=model)


def assert_same_store(one: AdapterStore, two: AdapterStore, ids: list[str]) -> None:
    assert sorted(one.ids()) == sorted(two.ids()) == sorted(ids)
    for doc_id in ids:
        assert all(torch.equal(value, two.get(doc_id)[key]) for key, value in one.get(doc_id).items())


@pytest.mark.distributed
def test_two_launched_processes_encode_the_store_one_process_encodes(tiny_dir, tmp_path):
    import json

    model, tokenizer = load_model(str(tiny_dir))
    spec = LoraSpec.for_model(model, rank=2, alpha=32)
    translator = tmp_path / "translator"
    DyPRAG(ParameterTranslator(DyPRAGConfig.for_model(model, spec, width=8, init_std=0.2)), model,
           tokenizer).save(translator, base_model_name="tiny")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in CORPUS))
    one, two = one_and_two_processes(tmp_path, model, "--method", "dyprag", "--translator", str(translator),
                                     "--encode", str(corpus), "--model", str(tiny_dir))
    assert_same_store(one, two, [row["id"] for row in CORPUS])


@pytest.mark.distributed
def test_two_launched_processes_train_the_prag_adapters_one_process_trains(tiny_dir, tmp_path):
    import json

    model, _ = load_model(str(tiny_dir))
    augmented = tmp_path / "aug.jsonl"
    augmented.write_text("".join(json.dumps({**row, "status": "ok", "qa": [
        {"question": f"What does document {i} say?", "answer": str(i * 7)}]}) + "\n" for i, row in enumerate(CORPUS)))
    one, two = one_and_two_processes(tmp_path, model, str(augmented), "--method", "prag", "--docs-per-batch", "1",
                                     "--model", str(tiny_dir))
    assert_same_store(one, two, [row["id"] for row in CORPUS])


def test_poly_refuses_to_run_as_several_processes(tmp_path, monkeypatch, capsys):
    from spring_cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    augmented = tmp_path / "aug.jsonl"
    augmented.write_text("")
    assert main(["parametrize", str(augmented), "--method", "poly", "--out", str(tmp_path / "poly")]) == 2
    assert "trains its experts jointly" in capsys.readouterr().err and not (tmp_path / "poly").exists()
