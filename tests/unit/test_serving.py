"""The serving layer without a server: merged adapters as PEFT folders, the serve command, and the refusals that
come before any request (the real-engine tests are in tests/serving/)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket

import pytest
import torch
from doctest_globals import document_tensors
from peft import PeftModel

from spring_cli import main
from spring_core import SpringModel
from spring_core.engine import Engine, Request
from spring_core.errors import OptionError, ServerError
from spring_core.model.loading import load_model
from spring_core.parametric import AdapterStore, DocumentAdapters, LoraSpec
from spring_core.parametric.online import ParametricDocument
from spring_core.serving import VLLMBackend, as_backend, vllm_command, write_peft_adapter


@pytest.fixture()
def model(tiny_dir):
    return load_model(str(tiny_dir))[0]


@pytest.fixture()
def adapters(tmp_path, model):
    spec = LoraSpec.for_model(model, rank=2, alpha=32)
    store = AdapterStore.create(tmp_path / "adapters", model, spec, base_model_name="tiny")
    store.add({f"doc-{i}": document_tensors(spec, i) for i in range(3)})
    return DocumentAdapters(store, model)


def test_merged_adapter_loaded_by_peft_equals_the_summed_update(tmp_path, tiny_dir, tiny, model, adapters):
    update = adapters.update_for(["doc-0", "doc-2"])
    folder = write_peft_adapter(update, tmp_path / "merged", model, base_model_name="tiny")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 4  # two documents of rank 2, scale folded into B
    assert sorted(config["target_modules"]) == ["down_proj", "gate_proj", "up_proj"]
    ids = torch.tensor([tiny[1]("Question: Who is Harvard named after?\nAnswer:")["input_ids"]])
    with adapters.activate(["doc-0", "doc-2"]), torch.no_grad():
        hooked = model(ids).logits
    peft_model = PeftModel.from_pretrained(load_model(str(tiny_dir))[0], str(folder))
    with torch.no_grad():
        served = peft_model(ids).logits
    torch.testing.assert_close(served, hooked, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        base = model(ids).logits
    assert not torch.allclose(served, base, atol=1e-3)  # the adapter does change the answer


def test_a_store_the_translator_encoded_averages_and_a_trained_one_sums(tmp_path, model, adapters):
    """DyPRAG's adapters resemble each other, so its store averages several documents (the paper's merge; summed,
    three of them act as about three times one update); PRAG's trained adapters sum. Either can be asked for."""
    spec = adapters.store.spec
    encoded = AdapterStore.create(tmp_path / "encoded", model, spec, base_model_name="tiny",
                                  encoding={"method": "dyprag"})
    encoded.add({f"doc-{i}": document_tensors(spec, i) for i in range(2)})
    mean, total = DocumentAdapters(encoded, model), DocumentAdapters(encoded, model, merge="sum")
    assert (adapters.merge, mean.merge, total.merge) == ("sum", "mean", "sum")
    name = next(iter(spec.modules))
    one, two = encoded.get("doc-0"), encoded.get("doc-1")
    a, b = mean.update_for(["doc-0", "doc-1"]).factors[name]
    torch.testing.assert_close(a, (one[f"{name}.lora_A"] + two[f"{name}.lora_A"]) / 2)
    torch.testing.assert_close(b, spec.scale * (one[f"{name}.lora_B"] + two[f"{name}.lora_B"]) / 2)
    assert total.update_for(["doc-0", "doc-1"]).rank == 4
    assert mean.identity(["doc-0"]) != total.identity(["doc-0"])  # a served merge is named by its merge too
    with pytest.raises(OptionError, match="merge"):
        DocumentAdapters(encoded, model, merge="max")


def test_an_update_on_some_layers_names_full_modules(tmp_path, model):
    spec = LoraSpec.for_model(model, rank=2, alpha=32, targets=["layers.0.mlp.up_proj"])
    store = AdapterStore.create(tmp_path / "one", model, spec, base_model_name="tiny")
    store.add({"d": document_tensors(spec, 0)})
    update = DocumentAdapters(store, copy.deepcopy(model)).update_for(["d"])
    folder = write_peft_adapter(update, tmp_path / "merged", model, base_model_name="tiny")
    assert json.loads((folder / "adapter_config.json").read_text())["target_modules"] == ["model.layers.0.mlp.up_proj"]


def test_serve_prints_the_vllm_command_with_the_flags_spring_needs(capsys, tiny_dir):
    assert main(["serve", str(tiny_dir), "--python", "py", "--port", "8123", "--adapters", "--max-lora-rank", "16",
                 "--print-command", "--", "--tensor-parallel-size", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("env VLLM_ALLOW_RUNTIME_LORA_UPDATING=true py -m vllm.entrypoints.openai.api_server")
    for flag in ("--enable-prompt-embeds", "--enable-lora", "--max-lora-rank 16", "--port 8123",
                 f"--model {tiny_dir}", "--tensor-parallel-size 2"):
        assert flag in line
    argv, env = vllm_command(str(tiny_dir), python="py")
    assert "--enable-lora" not in argv
    assert env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING") == os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING")


def test_serve_api_key_reaches_vllm_as_its_own_variable_and_stays_out_of_argv_and_print(capsys, tiny_dir):
    argv, env = vllm_command(str(tiny_dir), python="py", api_key="s3cret")
    assert env["VLLM_API_KEY"] == "s3cret" and "s3cret" not in " ".join(argv)  # argv is world-readable (ps)
    assert main(["serve", str(tiny_dir), "--python", "py", "--api-key", "s3cret", "--print-command"]) == 0
    line = capsys.readouterr().out
    assert "'VLLM_API_KEY=<the key given>'" in line and "s3cret" not in line


def test_serve_without_vllm_says_how_to_get_it(capsys, tmp_path, monkeypatch, tiny_dir):
    monkeypatch.chdir(tmp_path)  # no .venv-vllm here
    monkeypatch.delenv("SPRING_RAG_VLLM_PYTHON", raising=False)
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("this interpreter has vLLM")
    assert main(["serve", str(tiny_dir), "--print-command"]) == 2
    err = capsys.readouterr().err
    assert "no Python with vLLM found" in err and "bash scripts/bootstrap.sh --serving" in err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_is_a_clear_error_after_the_retries(tiny):
    backend = VLLMBackend(f"http://127.0.0.1:{closed_port()}/v1", max_retries=1, backoff=0.01, request_timeout=2)
    engine = Engine(SpringModel(*tiny), backend=backend)
    with pytest.raises(ServerError, match="cannot reach the vLLM server .* after 2 tries"):
        engine.generate(Request(prompt="Hello", settings={"max_new_tokens": 2}))


def test_marginal_decoding_is_refused_on_a_server_before_any_request(tiny):
    engine = Engine(SpringModel(*tiny), backend=as_backend(f"http://127.0.0.1:{closed_port()}"))
    docs = [ParametricDocument(None, "X is Y.", 1.0)]
    with pytest.raises(ServerError, match="decoding 'rag-token' cannot be served"):
        engine.generate(Request(question="Who?", documents=docs, k=0, decoding="rag-token"))
    with pytest.raises(OptionError, match="backend must be .* server URL"):
        as_backend("127.0.0.1:8000")
