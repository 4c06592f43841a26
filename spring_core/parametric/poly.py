"""Poly-PRAG: a small pool of latent LoRA experts shared by every document, and a routing vector per document.

Document ``d``'s adapter on module ``m`` is the routed mix of the experts' factors (Polytropon-style)::

    w_d = softmax(z_d)            A_d = sum_j w_dj A_j        B_d = sum_j w_dj B_j       update = (alpha/r) B_d A_d

At query time the retrieved documents' routing weights are averaged, only the ``top_experts`` largest are kept
(renormalised), and that one sparse mix is applied: no per-document adapter is stored or loaded. The folder holds
``spring.json`` (kind ``poly-experts``), ``experts.safetensors`` (per module ``A: [m, r, in]``, ``B: [m, out, r]``)
and ``routing.safetensors`` (``[documents, m]`` logits) with ``routing.json`` (the document ids, in row order).

Example:
    >>> poly = PolyAdapters.open("poly/", model)
    >>> poly.num_experts, poly.top_experts, len(poly)        # experts, kept per query, documents routed
    (4, 2, 9)
    >>> ids = tokenizer(question, return_tensors="pt")["input_ids"]
    >>> plain = model(ids).logits
    >>> with poly.activate(["doc-3", "doc-9"]):               # one sparse mix for the retrieved documents
    ...     routed = model(ids).logits
    ...     out = sm.generate(question, max_new_tokens=4)
    >>> torch.equal(routed, plain), torch.equal(model(ids).logits, plain)   # applied inside the block only
    (False, True)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from spring_core.artifacts.manifest import check_fingerprint, new_manifest, read_manifest, verified_file, write_artifact
from spring_core.errors import ArtifactError, UnknownDocumentError
from spring_core.parametric.hooks import AdapterHooks
from spring_core.parametric.lora import CachedAdapters, LoraUpdate
from spring_core.parametric.store import LoraSpec

KIND = "poly-experts"
EXPERTS = "experts.safetensors"
ROUTING = "routing.safetensors"
ROUTING_IDS = "routing.json"


def mix_experts(experts: Mapping[str, torch.Tensor], weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"<module>.lora_A": sum_j w_j A_j, ...}`` for routing weights ``[m]`` (or ``[batch, m]``: one mix per row)."""
    return {key: torch.tensordot(weights, value, dims=([weights.dim() - 1], [0])) for key, value in experts.items()}


def sparse_routing(logits: torch.Tensor, top_experts: int) -> torch.Tensor:
    """The mean of the documents' ``softmax`` routing weights ``[docs, m]``, cut to the ``top_experts`` largest and
    renormalised to sum to one."""
    weights = torch.softmax(logits.float(), dim=-1).mean(dim=0)
    if top_experts < weights.numel():
        keep = torch.topk(weights, top_experts).indices
        weights = torch.zeros_like(weights).index_copy(0, keep, weights[keep])
    return weights / weights.sum()


class PolyAdapters(CachedAdapters):
    """Latent experts and per-document routing on one model; ``activate`` applies the retrieved documents' mix.

    Args:
        spec: the experts' LoRA shape (rank, alpha, modules).
        experts: ``{"<module>.lora_A": [m, r, in], "<module>.lora_B": [m, out, r]}``.
        routing: ``[documents, m]`` routing logits, one row per id of ``doc_ids``.
        model: the frozen base model (hooked, never written).
        top_experts: how many experts a query's mix keeps.
    """

    def __init__(self, spec: LoraSpec, experts: Mapping[str, torch.Tensor], routing: torch.Tensor,
                 doc_ids: Sequence[str], model: Any, *, top_experts: int = 4, manifest: dict[str, Any] | None = None,
                 cache_size: int = 32):
        if routing.shape[0] != len(doc_ids):
            raise ArtifactError(f"routing has {routing.shape[0]} rows for {len(doc_ids)} documents")
        super().__init__(None if model is None else AdapterHooks(model, list(spec.modules)), cache_size)
        self.spec, self.experts, self.model = spec, dict(experts), model
        self.routing = routing.float()
        self.doc_ids = list(doc_ids)
        self.rows = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        self.top_experts = top_experts
        self.manifest = manifest or {}

    @property
    def num_experts(self) -> int:
        return int(self.routing.shape[1])

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.rows

    def __len__(self) -> int:
        return len(self.doc_ids)

    def identity(self, doc_ids: Sequence[str]) -> Any:
        """The artifact's manifest (``id`` of these experts when they were never saved) and ``top_experts``, which
        changes every update."""
        return [self.manifest or id(self), self.top_experts]

    def _compute(self, doc_ids: tuple[str, ...], state: Any = None) -> LoraUpdate:
        unknown = [d for d in doc_ids if d not in self.rows]
        if unknown:
            raise UnknownDocumentError(f"no routing vector for document(s) {unknown}; add them with "
                                       "`spring-rag parametrize --method poly --add`, or answer from their text")
        weights = sparse_routing(self.routing[[self.rows[d] for d in doc_ids]], self.top_experts)
        return LoraUpdate.sum(self.spec, [mix_experts(self.experts, weights)], self.model)

    # ----- files ---------------------------------------------------------------------------------------------

    def save(self, folder: str | Path, *, base_model_name: str, **fields: Any) -> Path:
        """Write the experts and routing as a ``poly-experts`` artifact (each file atomic, the manifest last)."""
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.spec.dtype, torch.float32)
        experts = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.experts.items()}
        files = {
            EXPERTS: save(experts),
            ROUTING: save({"logits": self.routing.detach().cpu().contiguous()}),
            ROUTING_IDS: (json.dumps(self.doc_ids) + "\n").encode(),
        }
        manifest = new_manifest(KIND, base_model_name=base_model_name, model=self.model, adapter=self.spec.to_json(),
                                num_experts=self.num_experts, top_experts=self.top_experts, documents=len(self),
                                **fields)
        return write_artifact(folder, manifest, files)

    @classmethod
    def open(cls, folder: str | Path, model: Any, *, model_name: str = "this model",
             top_experts: int | None = None) -> PolyAdapters:
        """Load and check a ``poly-experts`` artifact (fingerprint of ``model``, every file's SHA-256)."""
        manifest = read_manifest(folder, KIND)
        check_fingerprint(manifest, model, folder, model_name)
        spec = LoraSpec.from_json(manifest["adapter"])
        try:
            experts = load(verified_file(folder, manifest, EXPERTS).read_bytes())
            routing = load(verified_file(folder, manifest, ROUTING).read_bytes())["logits"]
            doc_ids = json.loads(verified_file(folder, manifest, ROUTING_IDS).read_text(encoding="utf-8"))
        except (KeyError, ValueError) as exc:
            raise ArtifactError(f"{folder} holds damaged expert or routing files ({exc}); copy it again") from exc
        weight = model.get_input_embeddings().weight
        experts = {k: v.to(weight.device, torch.float32) for k, v in experts.items()}
        return cls(spec, experts, routing, doc_ids, model, manifest=manifest,
                   top_experts=top_experts or int(manifest.get("top_experts", 4)))
