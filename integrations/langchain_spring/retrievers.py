"""``SpringRetriever``: a LangChain retriever over spring-rag's dense (chromadb) and BM25 stores.

Each hit becomes a ``Document`` whose ``page_content`` is the passage text and whose metadata holds ``id``,
``title`` and ``score`` (higher is better) next to the corpus row's own scalar fields, so ``format_docs`` can
number the passages as SPRING was trained on.

Example:
    >>> from langchain_spring import SpringRetriever
    >>> retriever = SpringRetriever(store="store/", k=3)  # a folder built by `spring-rag index`
    >>> [d.metadata["title"] for d in retriever.invoke("Who founded Harvard?")]
    ['Harvard University', ...]
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from spring_core.retrieval import RetrievedPassage, Retriever, open_store

_OPEN_LOCK = threading.Lock()


def passage_document(passage: RetrievedPassage) -> Document:
    """A retrieved passage as a ``Document`` (``id``, ``title`` and ``score`` win over same-named row fields)."""
    metadata = {**passage.metadata, "id": passage.id, "title": passage.title, "score": passage.score}
    return Document(page_content=passage.text, metadata=metadata, id=passage.id)


class SpringRetriever(BaseRetriever):
    """Retrieve the ``k`` best passages from a spring-rag store (dense or BM25) as LangChain documents.

    Args:
        store: a store folder (opened on first use, backend read from its ``store.json``) or an opened store /
            any object with ``retrieve(query, top_k)`` returning ``RetrievedPassage`` objects.
        k: how many documents to return; ``invoke(query, k=...)`` overrides it per call. (LangChain names a
            retriever's result count ``k``, and its standard retriever tests require it; spring-rag's own API calls
            it ``top_k``, keeping ``k`` for the virtual-token count.)
        embedder: for a dense store folder, the embedder to check it against (default: the one it was built with).

    Example:
        >>> from spring_core.data import sample_corpus_path
        >>> from spring_core.retrieval import index_corpus
        >>> store, _ = index_corpus(sample_corpus_path(), "my-store/", backend="bm25", show_progress=False)
        >>> SpringRetriever(store=store, k=2).invoke("Who is Harvard named after?")[0].metadata
        {'id': 'squad-Harvard_University-0', 'title': 'Harvard University', 'score': 3.77...}
    """

    store: Any
    k: int = Field(default=4, ge=1)
    embedder: str | None = None

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _opened: Retriever | None = PrivateAttr(default=None)

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: Any) -> Any:
        if isinstance(value, (str, Path)) or isinstance(value, Retriever):
            return value
        raise ValueError(f"store must be a store folder or an object with retrieve(query, top_k); got {type(value)}")

    @property
    def opened_store(self) -> Retriever:
        """The store object (a folder is opened once, on first use)."""
        if isinstance(self.store, Retriever):
            return self.store
        if self._opened is None:
            with _OPEN_LOCK:
                if self._opened is None:
                    self._opened = open_store(self.store, self.embedder)
        return self._opened

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[Document]:
        hits = self.opened_store.retrieve(query, top_k=self.k if k is None else k)
        return [passage_document(hit) for hit in hits]
