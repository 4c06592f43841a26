"""Artifact manifests and tables are checked against a schema at load; the table's magnitude against the model's."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from spring_core import VirtualTokens
from spring_core.artifacts.manifest import read_manifest, sha256_file
from spring_core.errors import ArtifactError


@pytest.fixture()
def artifact(tiny, tmp_path):
    model, tokenizer = tiny
    return VirtualTokens.random(model, n=4, tokenizer=tokenizer).save(tmp_path / "art")


def _rewrite_table(artifact, table):
    save_file({"tokens": table}, artifact / "tokens.safetensors")
    manifest = json.loads((artifact / "spring.json").read_text())
    manifest["files"]["tokens.safetensors"]["sha256"] = sha256_file(artifact / "tokens.safetensors")
    (artifact / "spring.json").write_text(json.dumps(manifest))


def test_a_sound_artifact_loads_without_a_warning(tiny, artifact):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert VirtualTokens.load(artifact, model=tiny[0]).n == 4


def test_values_far_outside_the_base_embedding_warn_and_absurd_values_are_refused(tiny, artifact):
    base = tiny[0].get_input_embeddings().weight.detach().abs().max()
    _rewrite_table(artifact, torch.full((4, 64), float(base) * 500))
    VirtualTokens.load(artifact)  # without a model there is nothing to compare with
    with pytest.warns(UserWarning, match="over 100x the base embedding's largest value"):
        VirtualTokens.load(artifact, model=tiny[0])
    _rewrite_table(artifact, torch.full((4, 64), 2e4))
    with pytest.raises(ArtifactError, match="values up to 2e\\+04, far beyond any embedding"):
        VirtualTokens.load(artifact)
    _rewrite_table(artifact, torch.zeros(4, 64, dtype=torch.float16))
    with pytest.raises(ArtifactError, match="float16 table; virtual tokens are float32"):
        VirtualTokens.load(artifact)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["base_model"].update(vocab_size=True), "base_model.vocab_size must be a positive integer"),
        (lambda m: m["base_model"]["fingerprint"].update(shape=[1]), "fingerprint.shape must be"),
        (lambda m: m["base_model"]["fingerprint"].update(sample_sha256=7), "sample_sha256 must be 16 hex"),
        (lambda m: m["base_model"].update(hidden_size=65), "inconsistent"),
        (lambda m: m["files"]["tokens.safetensors"].update(sha256="xyz"), "sha256 must be 64 hex digits"),
        (lambda m: m["files"]["tokens.safetensors"].update(bytes=-1), "bytes must be a byte count"),
        (lambda m: m["files"].update({"/etc/passwd": {"sha256": "0" * 64, "bytes": 1}}), "inside the artifact"),
        (lambda m: m.update(metrics=[1]), "field metrics must be an object"),
        (lambda m: m.update(data_sources="x"), "field data_sources must be a list"),
    ],
)
def test_each_field_is_checked_and_named(artifact, edit, message):
    manifest = json.loads((artifact / "spring.json").read_text())
    edit(manifest)
    (artifact / "spring.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        VirtualTokens.load(artifact)


def test_the_bundled_artifact_passes_the_schema():
    from spring_core.model.tokens import bundled_tokens_path

    assert read_manifest(bundled_tokens_path())["kind"] == "virtual-tokens"
    assert VirtualTokens.load("smollm2-135m-squad").n == 50
