"""Build a LlamaIndex query engine whose every LLM call reads SPRING's own layout (context, block, question).

Any engine works with ``SpringLLM`` (the block is placed in whatever template the engine uses); this one also
sets SPRING's templates, the layout the tokens were trained with, and reads nodes one by one for marginal or
parametric modes.

Example:
    >>> from llama_index.llms.spring import SpringLLM, spring_query_engine
    >>> from llama_index.retrievers.spring import SpringRetriever
    >>> retriever = SpringRetriever.from_corpus("corpus.jsonl", "store/", backend="bm25", similarity_top_k=3)
    >>> llm = SpringLLM(model_name="my-llama/", tokens="my-tokens/", max_new_tokens=4)  # or smollm2-135m-squad
    >>> engine = spring_query_engine(retriever, llm, k=10)
    >>> engine.query("Who founded Harvard?").metadata["spring_usage"]["virtual_tokens"]
    10
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.indices.base import BaseIndex
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.llms.spring.base import SpringLLM
from llama_index.llms.spring.prompts import spring_refine_template, spring_summary_template, spring_text_qa_template
from llama_index.llms.spring.synthesizer import SpringSynthesizer

from spring_core.errors import OptionError


def spring_prompt_kwargs(llm: SpringLLM, k: int | None = None) -> dict[str, Any]:
    """``text_qa_template``, ``refine_template`` and ``summary_template`` for ``llm`` with ``k`` virtual tokens
    (default: the LLM's ``k``, else all of its tokens; none when it has no tokens)."""
    if k is not None:
        llm.spring_model.check_k(k)
    layout = llm.layout or "raw"
    return {
        "text_qa_template": spring_text_qa_template(k, layout),
        "refine_template": spring_refine_template(k, layout),
        "summary_template": spring_summary_template(k, layout),
    }


def spring_query_engine(index_or_retriever: BaseIndex | BaseRetriever, llm: SpringLLM, k: int | None = None,
                        response_mode: str | None = None, **kwargs: Any) -> RetrieverQueryEngine:
    """A query engine over an index or a retriever that gives ``llm`` the SPRING layout.

    With ``llm.decoding == "stuff"`` (the default) it is LlamaIndex's own synthesizer with the three SPRING templates
    set; ``response_mode`` is any of LlamaIndex's (``compact`` by default, ``refine``, ``tree_summarize``, ...).
    With a marginal decoding (``rag-token``, ``rag-sequence``, ``rag-sequence-fast``) or a knowledge mode (``prag``,
    ``combine``) the nodes must reach the LLM one by one, with their adapter ids (add
    ``ParametricAdapterPostprocessor`` to ``node_postprocessors``), so the engine uses ``SpringSynthesizer`` and a
    ``response_mode`` (which would repack them) is refused.
    ``kwargs`` go to ``as_query_engine`` / ``RetrieverQueryEngine.from_args`` (e.g. ``similarity_top_k``,
    ``node_postprocessors``, ``streaming``).
    """
    if llm.decoding != "stuff" or llm.knowledge != "icl":
        if response_mode is not None:
            raise OptionError(
                f"SpringLLM(decoding={llm.decoding!r}, knowledge={llm.knowledge!r}) reads every retrieved node "
                f"on its own, but response_mode={response_mode!r} packs the nodes into one prompt; drop "
                "response_mode, or use decoding='stuff' and knowledge='icl'"
            )
        synthesizer = SpringSynthesizer(llm=llm, k=k, streaming=kwargs.pop("streaming", False))
        options: dict[str, Any] = {"response_synthesizer": synthesizer}
    else:
        options = {"response_mode": response_mode or "compact", **spring_prompt_kwargs(llm, k)}
    if isinstance(index_or_retriever, BaseIndex):
        return index_or_retriever.as_query_engine(llm=llm, **options, **kwargs)
    return RetrieverQueryEngine.from_args(index_or_retriever, llm=llm, **options, **kwargs)
