"""What the current LangChain run retrieved: the signal ``ChatSpring`` / ``SpringLLM`` place the block by.

LangChain hands a model only rendered messages, so the model cannot see which part of them is retrieved context.
LangChain's callbacks can: every retriever (``vector_store.as_retriever()``, ``SpringRetriever``, any
``BaseRetriever``) reports its query and documents. ``RetrievalTracker`` is a callback handler that is registered
as a LangChain configure hook (the mechanism LangSmith's tracer uses) when the first ``ChatSpring`` or ``SpringLLM``
is built (``install_tracker``; importing the package registers nothing), so from then on it sees every run in the
process without any change to the user's chain. It keeps, per root run (one ``chain.invoke``), the retrievals made
so far, and the variables its prompt templates were filled with (LangChain reports a template's inputs when it
runs: that is how an app that retrieves by itself, e.g. ``vector_store.similarity_search`` in a LangGraph node,
and fills ``prompt.invoke({"context": ..., "question": ...})`` still shows where its context and question are);
a model call in the same root run looks them up by its own run id.

**State lives exactly as long as its root run**: everything a root run recorded is dropped when that run ends
(or fails), and a retriever called on its own, outside any chain, is forgotten when it returns. There is no
count limit, so no number of unrelated calls on other threads can push a running chain's retrievals out.

Example:
    >>> chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | chat
    >>> answer = chain.invoke("Who is Harvard named after?")  # chat finds this run's documents and query
    >>> answer.usage_metadata["input_token_details"]  # so it placed its 10 virtual tokens between them
    {'virtual': 10}
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tracers.context import register_configure_hook


@dataclass(frozen=True)
class Retrieval:
    """One retriever call of a run: its query and the texts of the documents it returned."""

    query: str
    texts: tuple[str, ...]


@dataclass(frozen=True)
class RunSignals:
    """What a root run has shown so far about its prompt's parts: the retrievals that finished, and the
    variables each prompt template was filled with (``{"context": ..., "question": ...}``), in order."""

    retrievals: tuple[Retrieval, ...] = ()
    template_inputs: tuple[dict[str, str], ...] = ()


@dataclass
class _RootRun:
    """What one root run (and the runs under it) recorded so far."""

    members: list[UUID] = field(default_factory=list)
    retrievals: list[Retrieval] = field(default_factory=list)
    template_inputs: list[dict[str, str]] = field(default_factory=list)
    queries: dict[UUID, str] = field(default_factory=dict)  # retriever runs still running -> their query
    prompts: list[str] = field(default_factory=list)  # prompt_key of the model calls in it


class RetrievalTracker(BaseCallbackHandler):
    """Remembers each root run's retrievals while it runs (see the module docstring); thread-safe, runs inline."""

    run_inline = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roots: dict[UUID, _RootRun] = {}  # every run still running -> the record of its root run
        self._prompt_runs: dict[str, UUID] = {}

    def signals(self, run_id: UUID | None) -> RunSignals:
        """What the root run that ``run_id`` belongs to has shown so far (nothing for an unknown run)."""
        with self._lock:
            root = self._roots.get(run_id) if run_id is not None else None
            if root is None:
                return RunSignals()
            return RunSignals(tuple(root.retrievals), tuple(root.template_inputs))

    def run_for(self, prompt: str | Sequence[Any]) -> UUID | None:
        """The run of the model call that is answering ``prompt`` (a completion prompt, or chat messages) now.

        Models do not always get their own run: ``BaseLLM._generate`` sees the first prompt's run manager only, and
        ``BaseChatModel.stream`` passes none to ``_stream``. The start callbacks see every prompt with its run.
        """
        with self._lock:
            return self._prompt_runs.get(prompt_key(prompt))

    def tracked_runs(self) -> int:
        """How many runs (and model prompts) are tracked now: 0 once every run has ended."""
        with self._lock:
            return len(self._roots) + len(self._prompt_runs)

    # ----- callbacks: a run starts ---------------------------------------------------------------------------

    def _link(self, run_id: UUID, parent_run_id: UUID | None) -> _RootRun:
        """Add ``run_id`` to its parent's root run (a run without a parent is a root of its own); the caller
        holds the lock."""
        root = self._roots.get(parent_run_id) if parent_run_id is not None else None
        if root is None:  # a root run, or a parent that started before the tracker was installed
            root = _RootRun()
        root.members.append(run_id)
        self._roots[run_id] = root
        return root

    def _run_started(self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                     run_type: str | None = None, **kwargs: Any) -> None:
        with self._lock:
            root = self._link(run_id, parent_run_id)
            if run_type == "prompt" and isinstance(inputs, dict):  # a prompt template, with its variables
                root.template_inputs.append({str(k): v for k, v in inputs.items() if isinstance(v, str)})

    on_chain_start = _run_started

    def on_tool_start(self, serialized: Any, input_str: str, *, run_id: UUID, parent_run_id: UUID | None = None,
                      inputs: Any = None, **kwargs: Any) -> None:
        # LangChain passes a tool's inputs by keyword beside its input string; only the run's place in the tree counts
        self._run_started(serialized, input_str, run_id=run_id, parent_run_id=parent_run_id, **kwargs)

    def _model_started(self, serialized: Any, prompts: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                       **kwargs: Any) -> None:
        with self._lock:
            root = self._link(run_id, parent_run_id)
            for prompt in prompts:  # completion prompts, or one list of messages per conversation
                key = prompt_key(prompt)
                self._prompt_runs[key] = run_id
                root.prompts.append(key)

    on_chat_model_start = on_llm_start = _model_started

    def on_retriever_start(self, serialized: Any, query: str, *, run_id: UUID, parent_run_id: UUID | None = None,
                           **kwargs: Any) -> None:
        with self._lock:
            self._link(run_id, parent_run_id).queries[run_id] = query

    # ----- callbacks: a run ends -----------------------------------------------------------------------------

    def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID, parent_run_id: UUID | None = None,
                         **kwargs: Any) -> None:
        with self._lock:
            root = self._roots.get(run_id)
            if root is not None:
                texts = tuple(str(getattr(d, "page_content", "")) for d in documents)
                root.retrievals.append(Retrieval(root.queries.pop(run_id, ""), texts))
        self._run_ended(documents, run_id=run_id, parent_run_id=parent_run_id)

    def _run_ended(self, outcome: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """A root run that ends takes everything it recorded with it; runs under it are forgotten with it. (The
        root of a record is its first member: a run whose parent started before the tracker was installed roots
        its own record, and takes it with it too.)"""
        with self._lock:
            root = self._roots.get(run_id)
            if root is None or root.members[0] != run_id:
                return
            for member in root.members:
                if self._roots.get(member) is root:
                    del self._roots[member]
            for key in root.prompts:
                if self._prompt_runs.get(key) in root.members:
                    del self._prompt_runs[key]

    on_chain_end = on_chain_error = on_llm_end = on_llm_error = on_retriever_error = on_tool_end = on_tool_error = (
        _run_ended)


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
