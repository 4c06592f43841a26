"""``SpringSynthesizer``: a LlamaIndex response synthesizer that hands the retrieved nodes to ``SpringLLM`` one by
one, with their scores and adapter ids, so RAG-Token / RAG-Sequence decoding can weigh each passage and parametric
RAG can activate each document's adapter.

LlamaIndex's built-in synthesizers join the nodes into one ``context_str`` (``compact`` even repacks them to fill
the context window), after which no LLM can tell the passages apart. This one never joins them: each node's text
(as ``MetadataMode.LLM`` renders it, the same text the other synthesizers put in their prompts) becomes a passage,
and ``NodeWithScore.score`` its retriever score.

Example:
    >>> from llama_index.core.query_engine import RetrieverQueryEngine
    >>> from llama_index.llms.spring import SpringLLM, SpringSynthesizer
    >>> from llama_index.retrievers.spring import SpringRetriever
    >>> retriever = SpringRetriever.from_corpus("corpus.jsonl", "store/", backend="bm25", similarity_top_k=3)
    >>> llm = SpringLLM(model_name="my-llama/", tokens="my-tokens/", decoding="rag-sequence", k=10, max_new_tokens=4)
    >>> engine = RetrieverQueryEngine(retriever, response_synthesizer=SpringSynthesizer(llm=llm))
    >>> response = engine.query("Who founded Harvard?")
    >>> len(response.source_nodes), response.metadata["spring_usage"]["virtual_tokens"]  # 10 per passage
    (3, 30)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator, Sequence
from typing import Any

from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.response_synthesizers.base import BaseSynthesizer
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryType
from llama_index.core.types import RESPONSE_TEXT_TYPE
from llama_index.llms.spring.base import SpringLLM

from spring_core.errors import OptionError


class SpringSynthesizer(BaseSynthesizer):
    """Answer from the retrieved nodes as separate passages with ``SpringLLM.answer`` (the LLM's ``decoding``).

    Args:
        llm: the ``SpringLLM`` that answers.
        k: virtual tokens per passage (default: the LLM's ``k``, else all of its tokens).
        streaming: yield the answer as a stream; the marginal modes settle it at the end, so it comes as one piece.
        adapter_key: node metadata that names the document adapter (``ParametricAdapterPostprocessor`` writes it),
            for the LLM's ``knowledge``.
        **kwargs: the other ``BaseSynthesizer`` options (``callback_manager``, ``empty_response``, ...).
    """

    def __init__(self, llm: SpringLLM, k: int | None = None, streaming: bool = False, adapter_key: str = "adapter_id",
                 **kwargs: Any) -> None:
        if not isinstance(llm, SpringLLM):
            raise OptionError(f"SpringSynthesizer needs llm= a SpringLLM, got {type(llm).__name__}")
        super().__init__(llm=llm, streaming=streaming, **kwargs)
        self._k = k
        self._adapter_key = adapter_key

    def _get_prompts(self) -> PromptDictType:
        return {}  # the prompt is SPRING's layout, built per passage by SpringModel

    def _update_prompts(self, prompts: PromptDictType) -> None:
        pass

    def synthesize(self, query: QueryType, nodes: list[NodeWithScore],
                   additional_source_nodes: Sequence[NodeWithScore] | None = None, **response_kwargs: Any) -> Any:
        # get_response only sees the nodes' texts, so their scores, adapter ids and sources travel beside them.
        return super().synthesize(query, nodes, additional_source_nodes, **self._beside(nodes, response_kwargs))

    async def asynthesize(self, query: QueryType, nodes: list[NodeWithScore],
                          additional_source_nodes: Sequence[NodeWithScore] | None = None,
                          **response_kwargs: Any) -> Any:
        return await super().asynthesize(query, nodes, additional_source_nodes, **self._beside(nodes, response_kwargs))

    def _beside(self, nodes: Sequence[NodeWithScore], response_kwargs: dict[str, Any]) -> dict[str, Any]:
        """``response_kwargs`` with the nodes' scores, adapter ids and sources (title and text, without LlamaIndex's
        metadata lines: what a DyPRAG translator reads, as ``--encode`` reads a corpus row) where not given."""
        response_kwargs.setdefault("scores", [node.score for node in nodes])
        response_kwargs.setdefault("adapter_ids", [node.node.metadata.get(self._adapter_key) for node in nodes])
        response_kwargs.setdefault("sources", [{"title": str(node.node.metadata.get("title") or ""),
                                                "text": node.node.get_content(metadata_mode=MetadataMode.NONE)}
                                               for node in nodes])
        return response_kwargs

    def get_response(self, query_str: str, text_chunks: Sequence[str], scores: Sequence[float | None] | None = None,
                     **response_kwargs: Any) -> RESPONSE_TEXT_TYPE:
        text = self._answer_text(query_str, text_chunks, scores, response_kwargs)
        return _once(text) if self._streaming else text

    async def aget_response(self, query_str: str, text_chunks: Sequence[str],
                            scores: Sequence[float | None] | None = None, **response_kwargs: Any) -> RESPONSE_TEXT_TYPE:
        text = await asyncio.to_thread(self._answer_text, query_str, text_chunks, scores, response_kwargs)
        return _aonce(text) if self._streaming else text

    def _answer_text(self, query_str: str, text_chunks: Sequence[str], scores: Sequence[float | None] | None,
                     response_kwargs: dict[str, Any]) -> str:
        llm: SpringLLM = self._llm  # type: ignore[assignment]
        if self._k is not None:
            response_kwargs.setdefault("k", self._k)
        return llm.answer(query_str, list(text_chunks), scores, **response_kwargs).text


def _once(text: str) -> Generator[str, None, None]:
    yield text


async def _aonce(text: str) -> AsyncGenerator[str, None]:
    yield text
