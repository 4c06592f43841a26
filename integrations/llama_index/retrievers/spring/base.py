"""SpringRetriever: a LlamaIndex retriever over spring-rag's dense (chromadb) or BM25 stores.

It takes a user from a JSONL corpus to a query engine without building a LlamaIndex index by hand.

Example:
    >>> from llama_index.retrievers.spring import SpringRetriever
    >>> retriever = SpringRetriever.from_corpus("corpus.jsonl", "store/", backend="bm25", similarity_top_k=3)
    >>> [n.node.metadata["title"] for n in retriever.retrieve("Who founded Harvard?")]
    ['Harvard University', 'University of Chicago', 'Harvard University']
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from spring_core import options
from spring_core.retrieval import RetrievedPassage, Store, index_corpus, open_store

# Only the title is worth reading for the LLM and the embedder; ids and scores are bookkeeping.
_READABLE_METADATA = {"title"}


class SpringRetriever(BaseRetriever):
    """Retrieve ``similarity_top_k`` passages from a spring-rag store as LlamaIndex ``TextNode``s.

    Args:
        store: a store object or the folder of one (built by ``spring-rag index`` or ``from_corpus``).
        similarity_top_k: how many passages each query returns.
        embedder: for a dense store, the embedder it was built with (default: the recorded one).
    """

    def __init__(self, store: Store | str | Path, similarity_top_k: int = 5, *, embedder: str | None = None,
                 callback_manager: CallbackManager | None = None, verbose: bool = False):
        self.store = open_store(store, embedder) if isinstance(store, (str, Path)) else store
        self.similarity_top_k = options.integer("similarity_top_k", similarity_top_k, low=1)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_corpus(cls, corpus: str | Path, store_folder: str | Path, *, backend: str = "dense",
                    embedder: str | None = None, similarity_top_k: int = 5,
                    show_progress: bool = False) -> SpringRetriever:
        """Index a ``{"id", "title", "text"}`` JSONL corpus into ``store_folder`` (skipping ids already there)."""
        store, _ = index_corpus(corpus, store_folder, backend=backend, embedder=embedder,
                                show_progress=show_progress)
        return cls(store, similarity_top_k)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [_node(hit) for hit in self.store.retrieve(query_bundle.query_str, self.similarity_top_k)]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)


def _node(hit: RetrievedPassage) -> NodeWithScore:
    metadata: dict[str, Any] = {"title": hit.title, "passage_id": hit.id, **hit.metadata}
    hidden = [key for key in metadata if key not in _READABLE_METADATA]
    node = TextNode(id_=hit.id, text=hit.text, metadata=metadata, excluded_llm_metadata_keys=hidden,
                    excluded_embed_metadata_keys=hidden)
    return NodeWithScore(node=node, score=hit.score)
