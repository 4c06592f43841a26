"""What the current LangChain run retrieved: the signal ``ChatSpring`` / ``SpringLLM`` place the block by.

LangChain hands a model only rendered messages, so the model cannot see which part of them is retrieved context.
LangChain's callbacks can: every retriever (``vector_store.as_retriever()``, ``SpringRetriever``, any
``BaseRetriever``) reports its query and documents. ``RetrievalTracker`` is a callback handler that is registered
as a LangChain configure hook (the mechanism LangSmith's tracer uses) when the first ``ChatSpring`` or ``SpringLLM``
is built (``install_tracker``; importing the package registers nothing), so from then on it sees every run in the
process without any change to the user's chain. It keeps, per root run (one ``chain.invoke``), the retrievals made
so far; a model call in the same root run looks them up by its own run id. Records are dropped when the root run
ends.

Example:
    >>> chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | chat
    >>> chain.invoke("Who is Harvard named after?")  # chat finds this run's documents and query  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tracers.context import register_configure_hook

MAX_ROOTS = 1024
"""Root runs tracked at once; the oldest are forgotten first (a run that never reports its end cannot leak)."""


@dataclass(frozen=True)
class Retrieval:
    """One retriever call of a run: its query and the texts of the documents it returned."""

    query: str
    texts: tuple[str, ...]


class RetrievalTracker(BaseCallbackHandler):
    """Remembers each root run's retrievals (see the module docstring); thread-safe, runs inline."""

    run_inline = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._root_of: dict[UUID, UUID] = {}
        self._members: OrderedDict[UUID, list[UUID]] = OrderedDict()
        self._retrievals: dict[UUID, list[Retrieval]] = {}
        self._queries: dict[UUID, str] = {}
        self._prompt_runs: dict[str, UUID] = {}

    def retrievals(self, run_id: UUID | None) -> list[Retrieval]:
        """The retrievals that finished so far in the root run that ``run_id`` belongs to."""
        with self._lock:
            root = self._root_of.get(run_id) if run_id is not None else None
            return list(self._retrievals.get(root, [])) if root is not None else []

    def run_for(self, prompt: str | Sequence[Any]) -> UUID | None:
        """The run of the model call that is answering ``prompt`` (a completion prompt, or chat messages) now.

        Models do not always get their own run: ``BaseLLM._generate`` sees the first prompt's run manager only, and
        ``BaseChatModel.stream`` passes none to ``_stream``. The start callbacks see every prompt with its run.
        """
        with self._lock:
            return self._prompt_runs.get(prompt_key(prompt))

    # ----- run tree ------------------------------------------------------------------------------------------

    def _link(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        with self._lock:
            root = self._root_of.get(parent_run_id, parent_run_id) if parent_run_id is not None else run_id
            self._root_of[run_id] = root
            self._members.setdefault(root, []).append(run_id)
            self._members.move_to_end(root)
            while len(self._members) > MAX_ROOTS:
                self._forget(next(iter(self._members)))

    def _end(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        if parent_run_id is None:
            with self._lock:
                self._forget(run_id)

    def _forget(self, root: UUID) -> None:
        members = set(self._members.pop(root, []))
        for member in members:
            self._root_of.pop(member, None)
            self._queries.pop(member, None)
        for prompt in [p for p, run in self._prompt_runs.items() if run in members]:
            del self._prompt_runs[prompt]
        self._retrievals.pop(root, None)

    # ----- callbacks -----------------------------------------------------------------------------------------

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                       **kwargs: Any) -> None:
        self._link(run_id, parent_run_id)

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID,
                            parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._link(run_id, parent_run_id)
        with self._lock:
            for conversation in messages:
                self._prompt_runs[prompt_key(conversation)] = run_id

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                     **kwargs: Any) -> None:
        self._link(run_id, parent_run_id)
        with self._lock:
            for prompt in prompts:
                self._prompt_runs[prompt_key(str(prompt))] = run_id

    def on_tool_start(self, serialized: Any, input_str: str, *, run_id: UUID, parent_run_id: UUID | None = None,
                      **kwargs: Any) -> None:
        self._link(run_id, parent_run_id)

    def on_retriever_start(self, serialized: Any, query: str, *, run_id: UUID, parent_run_id: UUID | None = None,
                           **kwargs: Any) -> None:
        self._link(run_id, parent_run_id)
        with self._lock:
            self._queries[run_id] = query

    def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID, parent_run_id: UUID | None = None,
                         **kwargs: Any) -> None:
        with self._lock:
            root = self._root_of.get(run_id)
            if root is not None:
                texts = tuple(str(getattr(d, "page_content", "")) for d in documents)
                self._retrievals.setdefault(root, []).append(Retrieval(self._queries.pop(run_id, ""), texts))

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._end(run_id, parent_run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                       **kwargs: Any) -> None:
        self._end(run_id, parent_run_id)

    def on_llm_end(self, response: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._end(run_id, parent_run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                     **kwargs: Any) -> None:
        self._end(run_id, parent_run_id)


def prompt_key(prompt: str | Sequence[Any]) -> str:
    """A completion prompt as it is; chat messages as their types and texts."""
    if isinstance(prompt, str):
        return prompt
    return "\x00".join(f"{getattr(m, 'type', '')}\x01{getattr(m, 'text', '')}" for m in prompt)


TRACKER = RetrievalTracker()
"""The tracker the models read, once ``install_tracker`` has registered it."""

_tracker_var: ContextVar[RetrievalTracker | None] = ContextVar("spring_rag_retrieval_tracker", default=TRACKER)
_installed = threading.Event()
_install_lock = threading.Lock()


def install_tracker() -> RetrievalTracker:
    """Register ``TRACKER`` with LangChain's callback configuration, once per process; ``ChatSpring`` and
    ``SpringLLM`` call this when they are built, so only apps that use them carry the tracker."""
    with _install_lock:
        if not _installed.is_set():
            register_configure_hook(_tracker_var, inheritable=True)
            _installed.set()
    return TRACKER
