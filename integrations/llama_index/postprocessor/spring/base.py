"""ParametricAdapterPostprocessor: tag retrieved nodes with the document-adapter ids of parametric RAG.

In parametric RAG each document has a trained adapter; the LLM activates the adapters of the documents retrieved
for a query. This postprocessor is the hand-over point: it writes each node's document id into
``metadata[metadata_key]`` (default ``"adapter_id"``), hidden from the LLM and embedder text, and ``adapter_ids``
reads them back in retrieval order; ``SpringLLM(adapters=..., knowledge="prag" | "combine")`` behind
``spring_query_engine`` activates them for that query only. It never drops a node: nodes without a known adapter
are passed on untagged (``SpringLLM(missing_adapter="icl")`` then reads them as ordinary context).

Example:
    >>> from llama_index.postprocessor.spring import ParametricAdapterPostprocessor, adapter_ids
    >>> tagger = ParametricAdapterPostprocessor(known_ids={"doc-1"})
    >>> from llama_index.core.schema import NodeWithScore, TextNode
    >>> nodes = [NodeWithScore(node=TextNode(text=text, metadata={"passage_id": f"doc-{i}"}), score=1.0 / i)
    ...          for i, text in enumerate([passage, other], start=1)]  # as SpringRetriever returns them
    >>> adapter_ids(tagger.postprocess_nodes(nodes))  # so in index.as_query_engine(node_postprocessors=[tagger])
    ['doc-1']
"""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.bridge.pydantic import Field
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle


class ParametricAdapterPostprocessor(BaseNodePostprocessor):
    """Tag each node with the id of its document's adapter, without dropping or reordering nodes."""

    metadata_key: str = Field(default="adapter_id", description="Metadata key the adapter id is written to.")
    id_field: str | None = Field(
        default="passage_id",
        description="Metadata field holding the document id; falls back to the node's ref_doc_id, then node_id.",
    )
    known_ids: set[str] | None = Field(
        default=None, description="Ids that have adapters; other nodes stay untagged. None tags every node."
    )

    @classmethod
    def class_name(cls) -> str:
        return "ParametricAdapterPostprocessor"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        return [self._tag(node) for node in nodes]

    def _tag(self, scored: NodeWithScore) -> NodeWithScore:
        node = scored.node
        doc_id = self._document_id(node)
        if self.known_ids is not None and doc_id not in self.known_ids:
            return scored
        # A copy: the index's own stored node must not carry per-query tags.
        tagged = node.model_copy(update={
            "metadata": {**node.metadata, self.metadata_key: doc_id},
            "excluded_llm_metadata_keys": [*node.excluded_llm_metadata_keys, self.metadata_key],
            "excluded_embed_metadata_keys": [*node.excluded_embed_metadata_keys, self.metadata_key],
        })
        return NodeWithScore(node=tagged, score=scored.score)

    def _document_id(self, node: BaseNode) -> str:
        if self.id_field and node.metadata.get(self.id_field) is not None:
            return str(node.metadata[self.id_field])
        return str(node.ref_doc_id or node.node_id)


def adapter_ids(nodes: Sequence[NodeWithScore], metadata_key: str = "adapter_id") -> list[str]:
    """The adapter ids tagged on ``nodes``, in order, each once."""
    seen: dict[str, None] = {}
    for scored in nodes:
        value = scored.node.metadata.get(metadata_key)
        if value is not None:
            seen.setdefault(str(value), None)
    return list(seen)
