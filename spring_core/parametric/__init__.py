"""Parametric RAG: documents as LoRA adapters in an indexed store, applied per call without touching the base.

- ``AdapterStore`` / ``LoraSpec``: sharded safetensors of per-document adapters, integrity-checked on open
- ``DocumentAdapters`` / ``LoraUpdate``: the summed update of retrieved documents, active for one call only
- ``PolyAdapters`` (``spring_core.parametric.poly``): Poly-PRAG's latent experts and per-document routing
- ``DyPRAG`` / ``DyPRAGAdapters`` (``spring_core.parametric.dyprag``): a parameter translator that makes a document's
  adapter from its hidden state, at query time or into a store
- ``plan_call``: the modes ``icl``, ``prag``, ``combine`` (+ SPRING tokens);
  ``spring_core.engine.answer_with_adapters`` answers with them
- the offline side (augmentation, encoding) is the trainer's: ``spring_train.augment``, ``spring_train.parametrize``
"""

from spring_core.errors import UnknownDocumentError
from spring_core.parametric.dyprag import DyPRAG, DyPRAGAdapters, DyPRAGConfig
from spring_core.parametric.hooks import AdapterHooks
from spring_core.parametric.lora import DocumentAdapters, LoraUpdate
from spring_core.parametric.online import (
    ParametricDocument,
    activated,
    open_adapters,
    plan_call,
)
from spring_core.parametric.store import AdapterStore, LoraSpec

__all__ = [
    "AdapterHooks",
    "AdapterStore",
    "DocumentAdapters",
    "DyPRAG",
    "DyPRAGAdapters",
    "DyPRAGConfig",
    "LoraSpec",
    "LoraUpdate",
    "ParametricDocument",
    "UnknownDocumentError",
    "activated",
    "open_adapters",
    "plan_call",
]
