"""Baseline adapters (LoRA, prefix-tuning) as artifact folders, and loading any trained artifact for inference.

A LoRA or prefix artifact is peft's own folder (``adapter_config.json`` + ``adapter_model.safetensors``, so
``PeftModel.from_pretrained`` reads it as it is) plus the ``spring.json`` manifest with hashes and the base-model
fingerprint. A SPRING+ artifact is a virtual-tokens artifact whose LoRA sits in its ``lora/`` subfolder.

Example:
    >>> sm = load_trained("./my-llama", "my-tokens/")    # a fresh copy of the base model, tokens loaded
    >>> sm.tokens.n                                      # (a SPRING+ artifact: its LoRA merged first)
    10
    >>> out = sm.generate("Who?", passages=[passage], k=10, max_new_tokens=4)
    >>> out.usage.virtual_tokens
    10
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from spring_core.artifacts.manifest import check_fingerprint, new_manifest, read_manifest, verified_file, write_artifact
from spring_core.artifacts.registry import load_spring_model, lora_sha256, merge_lora
from spring_core.errors import ArtifactError
from spring_core.model.loading import load_model, model_display_name
from spring_core.model.spring_model import SpringModel
from spring_core.model.tokens import resolve_artifact

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_KINDS = {"lora": "lora-adapter", "prefix": "prefix-adapter"}
SPRING_PLUS_LORA = "lora"


def save_peft_artifact(peft_model: Any, folder: str | Path, *, method: str, **fields: Any) -> Path:
    """Write a peft adapter (``method`` "lora" or "prefix") as an artifact folder with a manifest."""
    base = peft_model.get_base_model()
    with tempfile.TemporaryDirectory() as scratch:
        peft_model.save_pretrained(scratch)
        files = {name: (Path(scratch) / name).read_bytes() for name in ADAPTER_FILES}
    manifest = new_manifest(ADAPTER_KINDS[method], base_model_name=model_display_name(base), model=base, **fields)
    return write_artifact(folder, manifest, files)


def read_peft_artifact(folder: str | Path, model: Any) -> dict[str, Any]:
    """Check a LoRA/prefix artifact (manifest, hashes, fingerprint against ``model``) and return its manifest."""
    manifest = read_manifest(folder)
    if manifest["kind"] not in ADAPTER_KINDS.values():
        raise ArtifactError(f"{folder} holds a {manifest['kind']!r} artifact; expected a LoRA or prefix adapter")
    for name in ADAPTER_FILES:
        verified_file(folder, manifest, name)
    check_fingerprint(manifest, model, folder, model_display_name(model))
    return manifest


def apply_peft_artifact(model: Any, folder: str | Path, *, trainable: bool = False) -> Any:
    """The adapter in ``folder`` on ``model`` as a peft model (peft changes ``model``: pass a copy you own). To fold
    a LoRA into the weights, use ``spring_core.artifacts.registry.merge_lora``."""
    from peft import PeftModel

    read_peft_artifact(folder, model)
    return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)


def adapter_sha256(folder: str | Path) -> str:
    """The hash that ties SPRING+ tokens to the LoRA they were trained on."""
    return lora_sha256(read_manifest(folder, "lora-adapter"))


def load_trained(model_name: str, artifact: str | Path | None = None, *, device: str | None = None,
                 dtype: Any = None) -> SpringModel:
    """A SpringModel for any artifact this trainer writes, on a freshly loaded copy of the base model.

    virtual tokens (SPRING, SPRING+) -> ``load_spring_model``; LoRA -> merged; prefix -> peft model.
    """
    folder = None if artifact is None else resolve_artifact(artifact)
    kind = None if folder is None else read_manifest(folder)["kind"]
    if kind in (None, "virtual-tokens"):
        return load_spring_model(model_name, folder, device=device, dtype=dtype)
    model, tokenizer = load_model(model_name, device=device, dtype=dtype)
    if kind == "lora-adapter":
        return SpringModel(merge_lora(model, folder), tokenizer)
    if kind == "prefix-adapter":
        return SpringModel(apply_peft_artifact(model, folder), tokenizer)
    raise ArtifactError(f"{folder} holds a {kind!r} artifact, which this command cannot load")
