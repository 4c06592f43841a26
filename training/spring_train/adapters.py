"""Baseline adapters (LoRA, prefix-tuning) as artifact folders, and loading any trained artifact for inference.

A LoRA or prefix artifact is peft's own folder (``adapter_config.json`` + ``adapter_model.safetensors``, so
``PeftModel.from_pretrained`` reads it as it is) plus the ``spring.json`` manifest with hashes and the base-model
fingerprint. A SPRING+ artifact is a virtual-tokens artifact whose LoRA sits in its ``lora/`` subfolder.

Example:
    >>> sm = load_trained("smollm2-135m", "runs/spring-plus")     # LoRA merged into a fresh copy, tokens loaded
    ...                                                           # doctest: +SKIP
    >>> sm.generate("Who?", passages=["..."], k=50).text          # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from spring_core.artifacts import check_fingerprint, new_manifest, read_manifest, verified_file, write_artifact
from spring_core.errors import ArtifactError
from spring_core.models import load_model, model_display_name
from spring_core.spring_model import SpringModel
from spring_core.tokens import VirtualTokens, resolve_artifact

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


def apply_peft_artifact(model: Any, folder: str | Path, *, merge: bool, trainable: bool = False) -> Any:
    """Load the adapter in ``folder`` onto ``model`` (which peft changes: pass a copy you own).

    With ``merge=True`` a LoRA is folded into the weights (fastest inference) and a plain model comes back.
    """
    from peft import PeftModel

    manifest = read_peft_artifact(folder, model)
    peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    if merge:
        if manifest["kind"] != "lora-adapter":
            raise ArtifactError(f"{folder} is a {manifest['kind']}; only a LoRA can be merged into the weights")
        merged = peft_model.merge_and_unload()
        merged.spring_rag_adapter = _adapter_hash(manifest)
        return merged
    return peft_model


def adapter_sha256(folder: str | Path) -> str:
    """The hash that ties SPRING+ tokens to the LoRA they were trained on."""
    return _adapter_hash(read_manifest(folder, "lora-adapter"))


def load_trained(model_name: str, artifact: str | Path | None = None, *, device: str | None = None,
                 dtype: Any = None) -> SpringModel:
    """A SpringModel for any artifact this trainer writes, on a freshly loaded copy of the base model.

    virtual tokens -> base model + tokens; SPRING+ -> LoRA merged + tokens; LoRA -> merged; prefix -> peft model.
    """
    model, tokenizer = load_model(model_name, device=device, dtype=dtype)
    if artifact is None:
        return SpringModel(model, tokenizer)
    folder = resolve_artifact(artifact)
    kind = read_manifest(folder)["kind"]
    if kind == "virtual-tokens":
        tokens = VirtualTokens.load(folder)
        if tokens.manifest.get("adapter"):
            model = apply_peft_artifact(model, folder / SPRING_PLUS_LORA, merge=True)
        return SpringModel(model, tokenizer, tokens)
    if kind == "lora-adapter":
        return SpringModel(apply_peft_artifact(model, folder, merge=True), tokenizer)
    if kind == "prefix-adapter":
        return SpringModel(apply_peft_artifact(model, folder, merge=False), tokenizer)
    raise ArtifactError(f"{folder} holds a {kind!r} artifact, which this command cannot load")


def _adapter_hash(manifest: dict[str, Any]) -> str:
    return str(manifest["files"]["adapter_model.safetensors"]["sha256"])
