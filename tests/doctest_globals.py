"""What the docstring examples assume is already there, built from the tiny random Llama (nothing downloaded).

Names: ``model`` and ``tokenizer`` (a private copy of the tiny Llama: parametric examples hook its modules),
``tokens`` (10 virtual tokens for it), ``sm`` (a ``SpringModel`` of the three), ``spec`` (its LoRA spec),
``tensors_1`` / ``tensors_2`` (one document's LoRA tensors each), ``question`` and ``passage`` / ``other``.
Folders, in the example's scratch folder: ``my-llama/`` (the tiny model saved with ``save_pretrained``),
``my-tokens/`` (``tokens``), ``adapters/`` (a document-adapter store holding doc-1 ... doc-9) and, when asked,
``store/`` (a BM25 store of the bundled sample corpus, as ``spring-rag index`` builds it).
With ``langchain=True`` (LangChain examples, which show a chain's pieces without building them): ``retriever`` (a
``SpringRetriever`` over ``store/``, k=3), ``format_docs``, ``RunnablePassthrough``, ``prompt``
(``SPRING_RAG_CHAT_PROMPT``), ``chat`` (``ChatSpring`` over ``my-llama/`` and ``my-tokens/``) and ``vector_store``
(an in-memory store of ``passage`` and ``other`` with fake embeddings). With ``llama_index=True``: ``index`` (a
LlamaIndex vector index of ``passage`` and ``other`` with mock embeddings) and ``corpus.jsonl`` (the sample corpus).
With ``training=True`` (the trainer's examples): ``train.jsonl`` and ``extra.jsonl`` (the 12 bundled SQuAD dev rows,
with their passages) and ``corpus.jsonl`` (the sample corpus). With ``poly=True``: ``poly/`` (a Poly-PRAG artifact,
4 random experts of ``spec`` routed for doc-1 ... doc-9, top 2 kept).
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


def langchain_globals(passages: list[str]) -> dict[str, Any]:
    """The LangChain pieces (``store/``, ``my-llama/`` and ``my-tokens/`` must be in the working directory)."""
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.runnables import RunnablePassthrough
    from langchain_core.vectorstores import InMemoryVectorStore

    from langchain_spring import SPRING_RAG_CHAT_PROMPT, ChatSpring, SpringRetriever, format_docs

    return {
        "retriever": SpringRetriever(store="store/", k=3), "format_docs": format_docs,
        "RunnablePassthrough": RunnablePassthrough, "prompt": SPRING_RAG_CHAT_PROMPT,
        "chat": ChatSpring(model="my-llama/", tokens="my-tokens/", max_tokens=8),
        "vector_store": InMemoryVectorStore.from_texts(passages, DeterministicFakeEmbedding(size=8)),
    }


def llama_index_globals(folder: Path, passages: list[str]) -> dict[str, Any]:
    """``index`` (mock embeddings: nothing downloaded, nothing sent), with ``corpus.jsonl`` written to ``folder``."""
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    from spring_core.data import sample_corpus_path

    shutil.copy(sample_corpus_path(), folder / "corpus.jsonl")
    documents = [Document(text=text) for text in passages]
    return {"index": VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))}


def write_poly(folder: Path, model: Any, spec: Any) -> None:
    """``poly/``: 4 small random experts and a random routing row for each of doc-1 ... doc-9."""
    from spring_core.parametric.poly import PolyAdapters

    experts: dict[str, torch.Tensor] = {}
    for seed in range(4):
        for name, tensor in document_tensors(spec, 200 + seed).items():
            experts.setdefault(name, []).append(tensor)
    stacked = {name: torch.stack(tensors) for name, tensors in experts.items()}
    routing = torch.randn(9, 4, generator=torch.Generator().manual_seed(300))
    poly = PolyAdapters(spec, stacked, routing, [f"doc-{i}" for i in range(1, 10)], model, top_experts=2)
    poly.save(folder / "poly", base_model_name="tiny-llama")
    poly.close()


def training_files(folder: Path) -> None:
    """``train.jsonl``, ``extra.jsonl`` and ``corpus.jsonl`` in ``folder``."""
    from spring_core.data import demo_qa_path, sample_corpus_path

    shutil.copy(demo_qa_path(), folder / "train.jsonl")
    shutil.copy(demo_qa_path(), folder / "extra.jsonl")
    shutil.copy(sample_corpus_path(), folder / "corpus.jsonl")


def tiny_globals(tiny_dir: Path, folder: Path, *, bm25_store: bool = False, langchain: bool = False,
                 llama_index: bool = False, training: bool = False, poly: bool = False) -> dict[str, Any]:
    """The names above, with their folders written into ``folder`` (the example's working directory)."""
    if training:
        training_files(folder)
    if bm25_store or langchain:
        from spring_core.data import sample_corpus_path
        from spring_core.retrieval import index_corpus

        index_corpus(sample_corpus_path(), folder / "store", backend="bm25", show_progress=False)
    from spring_core import SpringModel, VirtualTokens
    from spring_core.model.loading import load_model
    from spring_core.parametric import AdapterStore, LoraSpec

    shutil.copytree(tiny_dir, folder / "my-llama")
    model, tokenizer = load_model(str(tiny_dir))
    tokens = VirtualTokens.random(model, n=10, tokenizer=tokenizer)
    tokens.save(folder / "my-tokens")
    spec = LoraSpec.for_model(model, rank=2, alpha=32)
    store = AdapterStore.create(folder / "adapters", model, spec, base_model_name="tiny-llama")
    store.add({f"doc-{i}": document_tensors(spec, i) for i in range(1, 10)})
    if poly:
        write_poly(folder, model, spec)
    names = {
        "model": model, "tokenizer": tokenizer, "tokens": tokens, "sm": SpringModel(model, tokenizer, tokens),
        "spec": spec, "tensors_1": document_tensors(spec, 101), "tensors_2": document_tensors(spec, 102),
        "question": QUESTION, "passage": PASSAGE, "other": OTHER, "torch": torch,
    }
    if langchain:
        names.update(langchain_globals([PASSAGE, OTHER]))
    if llama_index:
        names.update(llama_index_globals(folder, [PASSAGE, OTHER]))
    return names
