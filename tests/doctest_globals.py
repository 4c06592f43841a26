"""What the docstring examples assume is already there, built from the tiny random Llama (nothing downloaded).

Names: ``model`` and ``tokenizer`` (a private copy of the tiny Llama: parametric examples hook its modules),
``tokens`` (10 virtual tokens for it), ``sm`` (a ``SpringModel`` of the three), ``spec`` (its LoRA spec),
``tensors_1`` / ``tensors_2`` (one document's LoRA tensors each), ``question`` and ``passage`` / ``other``.
Folders, in the example's scratch folder: ``my-llama/`` (the tiny model saved with ``save_pretrained``),
``my-tokens/`` (``tokens``), ``adapters/`` (a document-adapter store holding doc-1 ... doc-9) and, when asked,
``store/`` (a BM25 store of the bundled sample corpus, as ``spring-rag index`` builds it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

QUESTION = "Who is Harvard named after?"
PASSAGE = "Harvard University is named after John Harvard, its first benefactor."
OTHER = "Yale University is named after Elihu Yale."


def document_tensors(spec: Any, seed: int) -> dict[str, torch.Tensor]:
    """One document's LoRA tensors for ``spec`` (small random values, reproducible by ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (out_features, in_features) in spec.modules.items():
        tensors[f"{name}.lora_A"] = torch.randn(spec.rank, in_features, generator=generator) * 0.05
        tensors[f"{name}.lora_B"] = torch.randn(out_features, spec.rank, generator=generator) * 0.05
    return tensors


def tiny_globals(tiny_dir: Path, folder: Path, *, bm25_store: bool = False) -> dict[str, Any]:
    """The names above, with their folders written into ``folder`` (the example's working directory)."""
    if bm25_store:
        from spring_core.data import sample_corpus_path
        from spring_core.retrieval import index_corpus

        index_corpus(sample_corpus_path(), folder / "store", backend="bm25", show_progress=False)
    from spring_core import SpringModel, VirtualTokens
    from spring_core.models import load_model
    from spring_core.parametric import AdapterStore, LoraSpec

    shutil.copytree(tiny_dir, folder / "my-llama")
    model, tokenizer = load_model(str(tiny_dir))
    tokens = VirtualTokens.random(model, n=10, tokenizer=tokenizer)
    tokens.save(folder / "my-tokens")
    spec = LoraSpec.for_model(model, rank=2, alpha=32)
    store = AdapterStore.create(folder / "adapters", model, spec, base_model_name="tiny-llama")
    store.add({f"doc-{i}": document_tensors(spec, i) for i in range(1, 10)})
    return {
        "model": model, "tokenizer": tokenizer, "tokens": tokens, "sm": SpringModel(model, tokenizer, tokens),
        "spec": spec, "tensors_1": document_tensors(spec, 101), "tensors_2": document_tensors(spec, 102),
        "question": QUESTION, "passage": PASSAGE, "other": OTHER, "torch": torch,
    }
