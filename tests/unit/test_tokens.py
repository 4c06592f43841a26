"""VirtualTokens: initialisation, artifact round trip, and every way an artifact can be wrong."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model
from safetensors.torch import save_file

from spring_core import ArtifactError, ModelMismatchError, VirtualTokens
from spring_core.artifacts.manifest import fingerprint, sha256_file
from spring_core.errors import OptionError
from spring_core.prompts.layouts import DEFAULT_INSTRUCTION


def test_from_text_repeats_the_instruction_embeddings(tiny):
    model, tokenizer = tiny
    ids = tokenizer(DEFAULT_INSTRUCTION, add_special_tokens=False)["input_ids"]
    n = len(ids) + 3
    tokens = VirtualTokens.from_text(model, n=n, tokenizer=tokenizer)
    table = model.get_input_embeddings().weight
    expected_rows = [ids[i % len(ids)] for i in range(n)]
    assert tokens.n == n and tokens.hidden_size == table.shape[1]
    assert torch.equal(tokens.weight.detach(), table[expected_rows])
    assert tokens.manifest["init"] == {"method": "text", "text": DEFAULT_INSTRUCTION}


def test_from_text_truncates_and_is_a_trainable_copy(tiny):
    model, tokenizer = tiny
    tokens = VirtualTokens.from_text(model, n=2, tokenizer=tokenizer)
    assert tokens.n == 2 and tokens.weight.requires_grad
    assert tokens.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def test_from_text_needs_a_tokenizer_for_a_bare_model(tiny):
    with pytest.raises(ValueError, match="tokenizer"):
        VirtualTokens.from_text(tiny[0], n=4)


def test_vocab_and_random_inits_are_seeded(tiny):
    model, _ = tiny
    first, again = VirtualTokens.from_vocab(model, 6, seed=3), VirtualTokens.from_vocab(model, 6, seed=3)
    assert torch.equal(first.weight, again.weight)
    a, b = VirtualTokens.random(model, 6, seed=1), VirtualTokens.random(model, 6, seed=2)
    assert not torch.equal(a.weight, b.weight)
    assert a.manifest["init"]["method"] == "random"


def test_save_load_round_trip_keeps_table_and_manifest(tiny, tmp_path):
    model, tokenizer = tiny
    tokens = VirtualTokens.from_text(model, n=5, tokenizer=tokenizer, layout="chat")
    tokens.save(tmp_path / "art", metrics={"squad": {"em": 1.0}})
    loaded = VirtualTokens.load(tmp_path / "art", model=model)
    assert torch.equal(loaded.weight, tokens.weight)
    assert loaded.layout == "chat" and loaded.manifest["metrics"] == {"squad": {"em": 1.0}}
    manifest = json.loads((tmp_path / "art" / "spring.json").read_text())
    assert manifest["kind"] == "virtual-tokens" and manifest["n"] == 5
    assert manifest["base_model"]["fingerprint"] == fingerprint(model.get_input_embeddings().weight)
    assert manifest["files"]["tokens.safetensors"]["sha256"] == sha256_file(tmp_path / "art" / "tokens.safetensors")
    assert {"torch", "transformers"} <= set(manifest["library_versions"])
    assert not [p.name for p in (tmp_path / "art").iterdir() if p.name.endswith(".tmp")]


def test_loading_into_another_model_names_both(tiny, tmp_path):
    model, tokenizer = tiny
    VirtualTokens.random(model, 4).save(tmp_path / "art")
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = make_tiny_model(other_dir, tokenizer, seed=99)  # same shapes, different weights
    other.config._name_or_path = "other-llama"
    with pytest.raises(ModelMismatchError, match="other-llama") as raised:
        VirtualTokens.load(tmp_path / "art", model=other)
    assert model.config._name_or_path.split("/")[-1] in str(raised.value)


def test_fingerprint_is_the_same_in_float32_and_bfloat16(tiny):
    table = tiny[0].get_input_embeddings().weight
    assert fingerprint(table) == fingerprint(table.to(torch.bfloat16))


@pytest.fixture()
def artifact(tiny, tmp_path):
    path = tmp_path / "art"
    VirtualTokens.random(tiny[0], 4).save(path)
    return path


def test_truncated_tokens_file_is_refused(artifact):
    data = (artifact / "tokens.safetensors").read_bytes()
    (artifact / "tokens.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupted"):
        VirtualTokens.load(artifact)


def test_flipped_bytes_are_refused(artifact):
    data = bytearray((artifact / "tokens.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (artifact / "tokens.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        VirtualTokens.load(artifact)


def _replace_table(artifact, tensors):
    """Write a new tokens file and update its hash, as a buggy exporter would: hashes pass, content is wrong."""
    save_file(tensors, artifact / "tokens.safetensors")
    manifest = json.loads((artifact / "spring.json").read_text())
    manifest["files"]["tokens.safetensors"]["sha256"] = sha256_file(artifact / "tokens.safetensors")
    (artifact / "spring.json").write_text(json.dumps(manifest))


def test_wrong_shape_is_refused(artifact):
    _replace_table(artifact, {"tokens": torch.zeros(4, 10)})
    with pytest.raises(ArtifactError, match=r"\[4, 10\] table"):
        VirtualTokens.load(artifact)


def test_unreadable_safetensors_with_matching_hash_is_refused(artifact):
    (artifact / "tokens.safetensors").write_bytes(b"not a safetensors file")
    manifest = json.loads((artifact / "spring.json").read_text())
    manifest["files"]["tokens.safetensors"]["sha256"] = sha256_file(artifact / "tokens.safetensors")
    (artifact / "spring.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        VirtualTokens.load(artifact)


def test_nan_rows_are_refused_and_named(artifact):
    table = torch.zeros(4, 64)
    table[2, 5] = float("nan")
    table[3, 0] = float("inf")
    _replace_table(artifact, {"tokens": table})
    with pytest.raises(ArtifactError, match=r"2 row\(s\): \[r3\], \[r4\]"):
        VirtualTokens.load(artifact)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: "{not json", "not valid JSON"),
        (lambda m: json.dumps([1, 2]), "JSON object"),
        (lambda m: json.dumps({**m, "format_version": 99}), "format_version 99"),
        (lambda m: json.dumps({**m, "kind": "document-adapters"}), "'virtual-tokens' one is needed"),
        (lambda m: json.dumps({k: v for k, v in m.items() if k != "base_model"}), "base_model"),
        (lambda m: json.dumps({**m, "files": {}}), "does not list tokens.safetensors"),
    ],
)
def test_malformed_manifest_is_refused(artifact, damage, message):
    manifest = json.loads((artifact / "spring.json").read_text())
    (artifact / "spring.json").write_text(damage(manifest))
    with pytest.raises(ArtifactError, match=message):
        VirtualTokens.load(artifact)


def test_missing_folder_or_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        VirtualTokens.load(tmp_path / "nowhere")
    (tmp_path / "qa.jsonl").write_text("{}\n")
    with pytest.raises(ArtifactError, match="is a file, not an artifact folder"):
        VirtualTokens.load(tmp_path / "qa.jsonl")
    with pytest.raises(ArtifactError, match="no spring.json"):
        VirtualTokens.load(tmp_path)


def test_official_spring_pt_import(tiny, tmp_path):
    model, _ = tiny
    official = torch.randn(50, 64)
    torch.save(official, tmp_path / "tokens.pt")
    tokens = VirtualTokens.from_official_pt(tmp_path / "tokens.pt", model)
    assert tokens.n == 50 and torch.equal(tokens.weight.detach(), official)
    tokens.save(tmp_path / "art")
    assert torch.equal(VirtualTokens.load(tmp_path / "art", model=model).weight, official)
    torch.save({"embedding": official}, tmp_path / "dict.pt")
    assert torch.equal(VirtualTokens.from_official_pt(tmp_path / "dict.pt", model).weight.detach(), official)


def test_official_pt_with_wrong_hidden_size_or_garbage(tiny, tmp_path):
    model, _ = tiny
    torch.save(torch.randn(50, 4096), tmp_path / "mistral.pt")
    with pytest.raises(ArtifactError, match="4096-dimensional tokens but .* hidden size 64"):
        VirtualTokens.from_official_pt(tmp_path / "mistral.pt", model)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="not a readable PyTorch"):
        VirtualTokens.from_official_pt(tmp_path / "junk.pt", model)
    with pytest.raises(ArtifactError, match="does not exist"):
        VirtualTokens.from_official_pt(tmp_path / "absent.pt", model)


def test_an_official_pt_that_loading_would_refuse_is_refused_on_import_in_one_line(tiny, tmp_path):
    """Importing checks what loading the saved artifact checks, so it never writes one it cannot load; a file that
    needs code run to load is refused with one line, not torch's page of advice."""
    import pickle

    model, _ = tiny
    torch.save(torch.full((4, 64), 3.0e5), tmp_path / "huge.pt")
    with pytest.raises(ArtifactError, match="values up to 3e\\+05"):
        VirtualTokens.from_official_pt(tmp_path / "huge.pt", model)
    (tmp_path / "code.pt").write_bytes(pickle.dumps(ValueError("not a tensor")))
    with pytest.raises(ArtifactError, match="not a readable PyTorch tensor file") as refused:
        VirtualTokens.from_official_pt(tmp_path / "code.pt", model)
    assert "\n" not in str(refused.value) and "file an issue" not in str(refused.value)
    with pytest.raises(OptionError, match="space"):
        VirtualTokens.from_official_pt(tmp_path / "huge.pt", model, space="input")


def test_the_bundled_artifact_loads_by_name_and_says_how_it_was_made():
    from spring_core.model.tokens import BUNDLED, bundled_tokens_path

    tokens = VirtualTokens.load(BUNDLED[0])
    assert (tokens.n, tokens.hidden_size) == (50, 576)
    assert tokens.base_model_name.startswith("SmolLM2-135M")
    training = tokens.manifest["training"]
    assert training["method"] == "spring" and training["out"] is None
    assert {"squad_train.jsonl", "train.jsonl"} & {source.get("file") for source in tokens.manifest["data_sources"]}
    assert tokens.manifest["metrics"]["eval"], "the quality run's scores are recorded in the manifest"
    with pytest.raises(ArtifactError, match="no bundled artifact"):
        bundled_tokens_path("gpt-7")
