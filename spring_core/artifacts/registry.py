"""Open any artifact for a base model, without the trainer: one ``open_artifact`` for every kind.

================  ==========================================================================================
kind              what ``open_artifact(folder, model)`` returns
================  ==========================================================================================
virtual-tokens    ``VirtualTokens`` (SPRING; SPRING+ when the manifest names the LoRA it was trained on)
document-adapters ``DocumentAdapters`` (PRAG), hooks on ``model``
poly-experts      ``PolyAdapters`` (Poly-PRAG), hooks on ``model``
dyprag            ``DyPRAGAdapters`` (DyPRAG: adapters made by a translator on the fly), hooks on ``model``
lora-adapter      nothing to open on its own: ``merge_lora`` folds it into a model copy you own
================  ==========================================================================================

``load_spring_model(name, folder)`` is the whole path for inference: a freshly loaded copy of the base model, the
SPRING+ LoRA merged into it when the tokens need one, and the tokens. The merge is peft's (``W += alpha / r * B A``)
computed here from the artifact's files, so the runtime needs neither peft nor the trainer.

Example:
    >>> sm = load_spring_model("./my-llama", "my-tokens/")     # e.g. ("smollm2-135m", "runs/spring-plus")
    >>> adapters = open_artifact("adapters/", sm.model)
    >>> sm.n, type(adapters).__name__
    (10, 'DocumentAdapters')
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from spring_core.artifacts.manifest import check_fingerprint, read_manifest, verified_file
from spring_core.errors import ArtifactError
from spring_core.model.loading import load_model, model_display_name
from spring_core.model.spring_model import SpringModel
from spring_core.model.tokens import VirtualTokens, resolve_artifact

LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")
_PEFT_PREFIX = "base_model.model."


def _open_tokens(folder: Path, model: Any, model_name: str) -> VirtualTokens:
    return VirtualTokens.load(folder, model=model)


def _open_document_adapters(folder: Path, model: Any, model_name: str) -> Any:
    from spring_core.parametric.lora import DocumentAdapters
    from spring_core.parametric.store import AdapterStore

    return DocumentAdapters(AdapterStore.open(folder, model=model, model_name=model_name), model)


def _open_poly_experts(folder: Path, model: Any, model_name: str) -> Any:
    from spring_core.parametric.poly import PolyAdapters

    return PolyAdapters.open(folder, model, model_name=model_name)


def _open_dyprag(folder: Path, model: Any, model_name: str) -> Any:
    from spring_core.parametric.dyprag import DyPRAGAdapters

    return DyPRAGAdapters.open(folder, model, model_name=model_name)


OPENERS: dict[str, Callable[[Path, Any, str], Any]] = {
    "virtual-tokens": _open_tokens,
    "document-adapters": _open_document_adapters,
    "poly-experts": _open_poly_experts,
    "dyprag": _open_dyprag,
}


def open_artifact(folder: str | Path, model: Any, *, model_name: str | None = None,
                  kinds: tuple[str, ...] = tuple(OPENERS)) -> Any:
    """The artifact in ``folder`` opened for ``model`` (see the module table; ``model_name`` names the model in
    error messages); a kind outside ``kinds`` is an ``ArtifactError`` naming what was found and what was
    expected."""
    path = resolve_artifact(folder)
    kind = read_manifest(path)["kind"]
    if kind not in kinds:
        raise ArtifactError(f"{folder} holds a {kind!r} artifact, not {' or '.join(repr(k) for k in kinds)}")
    return OPENERS[kind](path, model, model_name or model_display_name(model))


def merge_lora(model: Any, folder: str | Path) -> Any:
    """Fold the LoRA artifact in ``folder`` (peft's files plus a manifest) into ``model``'s weights, as peft's
    ``merge_and_unload`` does, and return ``model``. It writes the weights: pass a copy you own."""
    path = Path(folder)
    manifest = read_manifest(path, "lora-adapter")
    check_fingerprint(manifest, model, path, model_display_name(model))
    config = json.loads(verified_file(path, manifest, LORA_FILES[0]).read_text(encoding="utf-8"))
    tensors = load_file(str(verified_file(path, manifest, LORA_FILES[1])))
    unsupported = [key for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save") if config.get(key)]
    other = [key for key in tensors if not key.endswith((".lora_A.weight", ".lora_B.weight"))]
    if unsupported or other:
        raise ArtifactError(f"{path}: this LoRA uses {', '.join(unsupported + other[:3])}, which spring-rag does not "
                            "merge itself; merge it with peft (PeftModel.from_pretrained(...).merge_and_unload())")
    rank = int(config["r"])
    scale = float(config["lora_alpha"]) / (math.sqrt(rank) if config.get("use_rslora") else rank)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, a in tensors.items():
            if not key.endswith(".lora_A.weight"):
                continue
            name = key.removeprefix(_PEFT_PREFIX).removesuffix(".lora_A.weight")
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            if name not in modules:
                raise ArtifactError(f"{path}: the model has no module {name!r}; this LoRA is for another model")
            weight = modules[name].weight
            delta = b.float() @ a.float() * scale
            if config.get("fan_in_fan_out"):  # GPT-2's Conv1D keeps its weight as [in, out]
                delta = delta.T
            weight += delta.to(weight.device, weight.dtype)
    model.spring_rag_merged_lora = lora_sha256(manifest)  # what SPRING+ tokens check they were trained on
    return model


def lora_sha256(manifest: dict[str, Any]) -> str:
    """The hash that ties SPRING+ tokens to the LoRA they were trained on (its weights file's)."""
    return str(manifest["files"][LORA_FILES[1]]["sha256"])


def load_spring_model(model_name: str, artifact: str | Path | None = None, *, device: str | None = None,
                      dtype: Any = None) -> SpringModel:
    """A ``SpringModel`` for a base model and (optionally) a virtual-tokens artifact, on a freshly loaded copy of
    the base model: SPRING+ tokens get the LoRA they were trained on merged into that copy first."""
    model, tokenizer = load_model(model_name, device=device, dtype=dtype)
    if artifact is None:
        return SpringModel(model, tokenizer)
    folder = resolve_artifact(artifact)
    manifest = read_manifest(folder, "virtual-tokens")
    if manifest.get("adapter"):
        merge_lora(model, folder / manifest["adapter"]["path"])
    return SpringModel(model, tokenizer, VirtualTokens.load(folder, model=model))
