"""Build a LlamaIndex query engine whose every LLM call carries the SPRING layout.

Example:
    >>> from llama_index.llms.spring import SpringLLM, spring_query_engine
    >>> from llama_index.retrievers.spring import SpringRetriever
    >>> retriever = SpringRetriever.from_corpus("corpus.jsonl", "store/", similarity_top_k=3)   # doctest: +SKIP
    >>> engine = spring_query_engine(retriever, SpringLLM(tokens="my-tokens/"), k=10)          # doctest: +SKIP
    >>> engine.query("Who founded Harvard?").response                                         # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.indices.base import BaseIndex
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.llms.spring.base import SpringLLM
from llama_index.llms.spring.prompts import spring_refine_template, spring_summary_template, spring_text_qa_template


def spring_prompt_kwargs(llm: SpringLLM, k: int | None = None) -> dict[str, Any]:
    """``text_qa_template``, ``refine_template`` and ``summary_template`` for ``llm`` with ``k`` markers
    (default: all of its virtual tokens; none when it has no tokens)."""
    k = llm.spring_model.check_k(llm.spring_model.n if k is None else k)
    layout = llm.prompt_layout or "raw"
    return {
        "text_qa_template": spring_text_qa_template(k, layout),
        "refine_template": spring_refine_template(k, layout),
        "summary_template": spring_summary_template(k, layout),
    }


def spring_query_engine(index_or_retriever: BaseIndex | BaseRetriever, llm: SpringLLM, k: int | None = None,
                        response_mode: str = "compact", **kwargs: Any) -> RetrieverQueryEngine:
    """A query engine over an index or a retriever with the three SPRING templates set.

    ``response_mode`` is any of LlamaIndex's (``compact``, ``refine``, ``tree_summarize``, ...); ``kwargs`` go to
    ``as_query_engine`` / ``RetrieverQueryEngine.from_args`` (e.g. ``similarity_top_k``, ``node_postprocessors``).
    """
    prompts = spring_prompt_kwargs(llm, k)
    if isinstance(index_or_retriever, BaseIndex):
        return index_or_retriever.as_query_engine(llm=llm, response_mode=response_mode, **prompts, **kwargs)
    return RetrieverQueryEngine.from_args(index_or_retriever, llm=llm, response_mode=response_mode, **prompts,
                                         **kwargs)
