"""``SpringRAGMiddleware``: two-step RAG for LangChain 1.x agents (``langchain.agents.create_agent``).

LangChain's two-step RAG retrieves for the user's message in a middleware and writes the documents into the
system prompt (the tutorial's ``@dynamic_prompt``), then the model answers. Written as text, the context cannot
be told from the rest of the prompt; this middleware also hands ``ChatSpring`` the context and the question as
structure, through the model request's settings (the ``rag_inputs`` call argument), so the block goes exactly
between them: no label heuristic, no warning. With any other chat model it only writes the prompt.

By default it writes the context into the user's turn, right before the question, for this model call only (the
agent's state keeps the user's message as it was): context, block, question, the order SPRING's tokens read best
(27.0 EM against 24.0 with the context in the system prompt; 200 held-out questions, ``benchmarks/dropin.py``).
``context_in="system"`` writes the tutorial's system prompt exactly. With tools too
(``create_agent(chat, [tool], middleware=[...])``) the block goes between the context and the question the same
way, in the chat template's own rendering of the tools; a model call that ends with tool results is the answer
step, the block after the results (``langchain_spring.tools``).

Example:
    >>> from langchain.agents import create_agent
    >>> from langchain_spring import ChatSpring, SpringRAGMiddleware
    >>> chat = ChatSpring(model="my-llama/", tokens="my-tokens/", max_tokens=8)  # or tokens="smollm2-135m-squad"
    >>> agent = create_agent(chat, tools=[], middleware=[SpringRAGMiddleware(vector_store=vector_store)])
    >>> state = agent.invoke({"messages": [{"role": "user", "content": "Who is Harvard named after?"}]})
    >>> [type(m).__name__ for m in state["messages"]], state["messages"][-1].usage_metadata["input_token_details"]
    (['HumanMessage', 'AIMessage'], {'virtual': 10})
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables.config import run_in_executor

from langchain_spring.chains import unwrap_binding
from langchain_spring.chat_models import ChatSpring
from spring_core.errors import OptionError

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Use the following context in your response:\n\n{context}"
"""The system prompt of LangChain's two-step RAG tutorial; ``{context}`` is replaced by the documents."""


def join_documents(documents: Sequence[Document]) -> str:
    """The tutorial's context: the documents' texts, separated by blank lines."""
    return "\n\n".join(document.page_content for document in documents)


class SpringRAGMiddleware(AgentMiddleware):
    """Retrieve for the last user message, write the context before it, and tell ``ChatSpring`` where the
    context and the question are.

    Args:
        retriever: a LangChain retriever (``vector_store.as_retriever()``, ``SpringRetriever``, any
            ``BaseRetriever``); its runs are traced like any retriever's.
        vector_store: or a vector store, searched with ``similarity_search(query, k=k)`` (under ``ainvoke``:
            its ``asimilarity_search`` when it has one, else ``similarity_search`` in a worker thread).
        k: documents per search with ``vector_store`` (a retriever has its own count).
        system_prompt: the system prompt, with ``{context}`` where the documents go (default: the tutorial's).
        format_documents: documents -> context text, a string (default: their texts joined by blank lines).
        context_in: ``"user"`` (the system prompt without its ``{context}``, and the context written before the
            question in the last user turn of this model call) or ``"system"`` (the tutorial's way: the context
            replaces ``{context}`` in the system prompt).

    Example:
        >>> from langchain.agents import create_agent
        >>> middleware = SpringRAGMiddleware(retriever, system_prompt="Answer from:\\n{context}")
        >>> agent = create_agent(chat, tools=[], middleware=[middleware])
        >>> state = agent.invoke({"messages": [{"role": "user", "content": "Who is Harvard named after?"}]})
        >>> state["messages"][-1].usage_metadata["input_token_details"]
        {'virtual': 10}
    """

    def __init__(self, retriever: Any = None, *, vector_store: Any = None, k: int = 4,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                 format_documents: Callable[[Sequence[Document]], str] = join_documents,
                 context_in: Literal["user", "system"] = "user"):
        super().__init__()
        if (retriever is None) == (vector_store is None):
            raise OptionError("SpringRAGMiddleware needs a retriever or a vector_store (one of them)")
        if retriever is not None and not callable(getattr(retriever, "invoke", None)):
            raise OptionError(f"retriever must be a LangChain retriever (with invoke), got {type(retriever).__name__}")
        if vector_store is not None and not callable(getattr(vector_store, "similarity_search", None)):
            raise OptionError("vector_store must have similarity_search(query, k), got "
                              f"{type(vector_store).__name__}")
        if not isinstance(system_prompt, str) or "{context}" not in system_prompt:
            raise OptionError("system_prompt must be a string with a {context} placeholder")
        if context_in not in ("system", "user"):
            raise OptionError(f"context_in must be 'user' or 'system', got {context_in!r}")
        self.retriever, self.vector_store, self.k = retriever, vector_store, k
        self.system_prompt, self.format_documents, self.context_in = system_prompt, format_documents, context_in

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse],
                        ) -> ModelResponse:
        question = _question(request)
        if question is None:
            return handler(request)
        if self.retriever is not None:
            documents = self.retriever.invoke(question)
        else:
            documents = self.vector_store.similarity_search(question, k=self.k)
        return handler(self._with_context(request, question, documents))

    async def awrap_model_call(self, request: ModelRequest,
                               handler: Callable[[ModelRequest], Awaitable[ModelResponse]]) -> ModelResponse:
        question = _question(request)
        if question is None:
            return await handler(request)
        if self.retriever is not None:
            documents = await self.retriever.ainvoke(question)
        elif callable(search := getattr(self.vector_store, "asimilarity_search", None)):
            documents = await search(question, k=self.k)
        else:  # a store with similarity_search only: it blocks, so it runs in a worker thread
            documents = await run_in_executor(None, self.vector_store.similarity_search, question, k=self.k)
        return await handler(self._with_context(request, question, documents))

    def _with_context(self, request: ModelRequest, question: str, documents: Sequence[Document]) -> ModelRequest:
        context = self.format_documents(documents)
        if not isinstance(context, str):
            raise OptionError("format_documents must turn the documents into the context text (a str), got "
                              f"{type(context).__name__}")
        settings = dict(request.model_settings)
        if isinstance(unwrap_binding(request.model), ChatSpring):
            settings["rag_inputs"] = {"context": context, "question": question}
        if self.context_in == "system":
            system = SystemMessage(self.system_prompt.replace("{context}", context))
            return request.override(system_message=system, model_settings=settings)
        system = SystemMessage(self.system_prompt.replace("{context}", "").strip())
        last = max(i for i, message in enumerate(request.messages) if isinstance(message, HumanMessage))
        messages = [*request.messages[:last], HumanMessage(f"{context}\n\n{question}"), *request.messages[last + 1:]]
        return request.override(system_message=system, messages=messages, model_settings=settings)


def _question(request: ModelRequest) -> str | None:
    """The text of the conversation's last user message (``None`` when there is none)."""
    for message in reversed(request.messages):
        if isinstance(message, HumanMessage):
            return message.text or None
    return None
