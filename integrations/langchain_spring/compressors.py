"""``ParametricAdapterCompressor``: tags retrieved documents with the id of their parametric adapter.

In parametric RAG each document has a trained adapter (``spring-rag parametrize``); ``ChatSpring`` /
``SpringLLM`` with ``adapters=`` and ``knowledge="prag"`` or ``"combine"`` activate the adapters named in
``metadata[metadata_key]`` (default ``"adapter_id"``) for that call only. This compressor writes that id from the
document's id; it never drops, reorders or rewrites a document. A document without an id gets ``None`` (no
adapter: an error, or its text in the prompt with ``missing_adapter="icl"``).

Example:
    >>> from langchain_core.documents import Document
    >>> docs = [Document(page_content="Hamlet is a play.", metadata={"id": "p1"})]
    >>> ParametricAdapterCompressor().compress_documents(docs, "Who wrote Hamlet?")[0].metadata
    {'id': 'p1', 'adapter_id': 'p1'}
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document


class ParametricAdapterCompressor(BaseDocumentCompressor):
    """Set ``metadata[metadata_key]`` to each document's id; keep every document, in order.

    Args:
        metadata_key: where the adapter id goes (default ``"adapter_id"``).
        id_key: the metadata field holding the document id (default ``"id"``, as ``SpringRetriever`` writes);
            ``Document.id`` is used when that field is absent.

    Example:
        >>> compressor = ParametricAdapterCompressor(metadata_key="prag_adapter")
        >>> compressor.compress_documents([Document(page_content="x", id="p7")], "q")[0].metadata
        {'prag_adapter': 'p7'}
    """

    metadata_key: str = "adapter_id"
    id_key: str = "id"

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """New documents with the adapter id added; the input documents are not modified."""
        return [self._tag(document) for document in documents]

    def _tag(self, document: Document) -> Document:
        adapter_id = document.metadata.get(self.id_key, document.id)
        metadata = {**document.metadata, self.metadata_key: adapter_id}
        return Document(page_content=document.page_content, metadata=metadata, id=document.id)
