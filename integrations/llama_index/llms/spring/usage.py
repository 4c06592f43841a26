"""A query's token usage on its ``Response``: ``response.metadata["spring_usage"]``.

``SpringLLM`` reports each answer's token counts in ``CompletionResponse.raw["usage"]`` (``prompt_tokens``,
``completion_tokens``, ``virtual_tokens``, ``total_tokens``), but a query engine's ``Response`` does not carry the
LLM's responses. ``QueryUsage`` is a LlamaIndex instrumentation event handler that adds up the usage of every
``SpringLLM`` call made while a query runs (refine and tree-summarize make several) and writes the sum, with the
number of calls, into that query's ``Response.metadata["spring_usage"]``. It is added to LlamaIndex's root
dispatcher when the first ``SpringLLM`` is built (``install_query_usage``; importing registers nothing). A
streaming response is returned before its (last) answer is generated, so it carries no usage, not even that of
the calls already made (refine); read the last ``CompletionResponse.raw["usage"]`` of the stream instead.

Example:
    >>> from llama_index.llms.spring import SpringLLM
    >>> llm = SpringLLM(model_name="my-llama/", tokens="my-tokens/", max_new_tokens=4)  # or smollm2-135m-squad
    >>> response = index.as_query_engine(llm=llm).query("Who?")
    >>> response.metadata["spring_usage"]
    {'prompt_tokens': ..., 'completion_tokens': ..., 'virtual_tokens': 10, 'total_tokens': ..., 'llm_calls': 1}
"""

from __future__ import annotations

import threading
from collections import Counter
from contextvars import ContextVar
from typing import Any

from llama_index.core.base.response.schema import AsyncStreamingResponse, StreamingResponse
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent
from llama_index.core.instrumentation.events.query import QueryEndEvent, QueryStartEvent

USAGE_KEY = "spring_usage"
"""The ``Response.metadata`` key that holds a query's usage."""
COUNTS = ("prompt_tokens", "completion_tokens", "virtual_tokens", "total_tokens")

_open_queries: ContextVar[tuple[Counter[str], ...]] = ContextVar("spring_rag_open_queries", default=())


class QueryUsage(BaseEventHandler):
    """Sums ``SpringLLM`` usage per running query (nested queries count toward their parents too)."""

    @classmethod
    def class_name(cls) -> str:
        return "SpringQueryUsage"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, QueryStartEvent):
            _open_queries.set((*_open_queries.get(), Counter()))
        elif isinstance(event, (LLMCompletionEndEvent, LLMChatEndEvent)):
            raw = getattr(event.response, "raw", None)
            usage = raw.get("usage") if isinstance(raw, dict) else None
            if isinstance(usage, dict) and "virtual_tokens" in usage:  # a SpringLLM answer, not another LLM's
                for counter in _open_queries.get():
                    counter.update({name: int(usage.get(name, 0)) for name in COUNTS} | {"llm_calls": 1})
        elif isinstance(event, QueryEndEvent):
            open_queries = _open_queries.get()
            if not open_queries:
                return
            _open_queries.set(open_queries[:-1])
            response = event.response
            if isinstance(response, (StreamingResponse, AsyncStreamingResponse)):
                return  # its last answer is generated while it is read: a sum now would be short of it
            if hasattr(response, "metadata") and open_queries[-1]["llm_calls"]:
                totals = open_queries[-1]
                response.metadata = {**(response.metadata or {}),
                                     USAGE_KEY: {name: totals[name] for name in (*COUNTS, "llm_calls")}}


_installed: QueryUsage | None = None
_install_lock = threading.Lock()


def install_query_usage() -> QueryUsage:
    """Add ``QueryUsage`` to LlamaIndex's root dispatcher, once per process (``SpringLLM`` calls this)."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = QueryUsage()
            get_dispatcher().add_event_handler(_installed)
    return _installed
