"""``ChatSpring``: a LangChain chat model over a local Hugging Face LLM that reads SPRING virtual tokens.

Messages are rendered with the tokenizer's chat template (``add_generation_prompt=True``); a model without one
gets a plain ``Role: content`` transcript. In a RAG chain the block goes between the retrieved context and the
question by itself (``langchain_spring.placement``): any prompt, any chain, no template change. Message text is
never searched for markers; ``[r1]`` in a document or a message is read as characters.

Example:
    >>> from langchain_spring import ChatSpring
    >>> chat = ChatSpring(model="my-llama/", tokens="my-tokens/", max_tokens=8)  # or smollm2-135m(-squad)
    >>> chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | chat
    >>> answer = chain.invoke("Who is Harvard named after?")
    >>> answer.usage_metadata["input_token_details"]  # the 10 virtual tokens, placed between context and question
    {'virtual': 10}
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.runnables.config import run_in_executor
from langchain_core.tools import BaseTool

from langchain_spring._base import SpringParams, finished, usage_metadata
from langchain_spring.tracking import TRACKER
from spring_core import Generation
from spring_core.aio import iterate_in_thread
from spring_core.engine import Request
from spring_core.generation import GenerationStream
from spring_core.prompts.layouts import has_chat_template, render_chat
from spring_core.prompts.placement import Placement
from spring_core.types import PromptParts

_ROLES: dict[type[BaseMessage], str] = {SystemMessage: "system", HumanMessage: "user", AIMessage: "assistant"}


def message_turns(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` for a chat template; text content only, tool messages are refused."""
    turns = []
    for message in messages:
        if isinstance(message, ToolMessage) or getattr(message, "tool_calls", None):
            raise NotImplementedError("ChatSpring does not support tool calling, so it cannot read tool messages")
        if isinstance(message, ChatMessage):
            role = message.role
        else:
            role = next((name for kind, name in _ROLES.items() if isinstance(message, kind)), None)
            if role is None:
                raise ValueError(f"ChatSpring cannot read a {type(message).__name__}; use system, human or AI messages")
        if not isinstance(message.content, str):
            other = sorted({str(block.get("type")) for block in message.content
                            if isinstance(block, dict) and block.get("type") != "text"})
            if other:
                raise ValueError(f"ChatSpring reads text only; this message holds {', '.join(other)} content")
        turns.append({"role": role, "content": message.text})
    return turns


def render_messages(turns: Sequence[dict[str, str]], tokenizer: Any, placement: Placement | None = None,
                    k: int = 0) -> PromptParts:
    """The prompt: the chat template with the assistant turn opened (else a ``Role: content`` transcript), with a
    ``k``-token block at ``placement``."""
    at = placement.at if placement is not None else None
    if has_chat_template(tokenizer):
        return render_chat(tokenizer, turns, at, k)
    lines = [f"{turn['role'].capitalize()}: " for turn in turns]
    text, offset = "", None
    for index, (head, turn) in enumerate(zip(lines, turns, strict=True)):
        if at is not None and at.message == index:
            offset = len(text) + len(head) + at.offset
        text += head + turn["content"] + "\n"
    text += "Assistant:"
    if offset is None or k == 0:
        return PromptParts(text)
    return PromptParts(text[:offset], k, text[offset:])


class ChatSpring(SpringParams, BaseChatModel):
    """Chat model over ``spring_core.SpringModel``: a local Hugging Face LLM plus optional SPRING virtual tokens.

    Fields (LangChain names): ``model``, ``tokens``, ``k``, ``temperature``, ``max_tokens``, ``stop``,
    ``timeout``, ``max_retries``, ``model_kwargs``; ``spring_model=`` shares a ``SpringModel`` you loaded. The
    model loads on first use. Answers carry ``usage_metadata`` with real token counts: ``input_tokens`` includes
    the virtual tokens, which are also given as ``input_token_details["virtual"]``. Tool calling and structured
    output are not supported.

    ``invoke(question, documents=docs)`` answers from retrieved documents read as separate passages, with the
    field ``decoding`` (``stuff``, ``rag-token``, ``rag-sequence``, ``rag-sequence-fast``; per call: ``decoding=``) and
    each document's ``metadata["score"]`` as its retriever score; ``create_spring_rag_chain`` does this for a
    marginal ``decoding``.

    Example:
        >>> from langchain_spring import ChatSpring
        >>> chat = ChatSpring(model="my-llama/", tokens="my-tokens/", max_tokens=4)  # or model="smollm2-135m"
        >>> chat.invoke("Hello").usage_metadata  # no retrieved context: the plain base model, no virtual tokens
        {'input_tokens': 19, 'output_tokens': 4, 'total_tokens': 23, 'input_token_details': {'virtual': 0}}
        >>> len([chunk.content for chunk in chat.stream("Hello")]) >= 4  # one chunk per token, then a final one
        True
    """

    streaming: bool = False
    """Make ``invoke`` go through the token stream (LangChain's convention)."""

    @property
    def _llm_type(self) -> str:
        return "spring-chat"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Not supported: SPRING models here have no tool-calling format."""
        raise NotImplementedError(
            "ChatSpring does not support tool calling (bind_tools) or structured output: it answers in plain text"
        )

    # ----- generation ----------------------------------------------------------------------------------------

    def _chat_request(self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                      run_manager: Any = None) -> Request:
        turns = message_turns(messages)
        if kwargs.get("documents") is not None:
            if [turn["role"] for turn in turns] != ["user"]:
                raise ValueError(
                    "with documents=, ChatSpring builds the SPRING prompt itself: pass the question alone (a string "
                    f"or one human message), not {len(turns)} message(s) with roles {[t['role'] for t in turns]}"
                )
            return self._documents_request(turns[0]["content"], stop, kwargs)
        run_id = getattr(run_manager, "run_id", None) or TRACKER.run_for(messages)
        settings, k = self._call_settings(stop, kwargs)
        placement, k = self._placement([t["content"] for t in turns], [t["role"] for t in turns], run_id, k,
                                       kwargs.get("rag_inputs"))
        return Request(prompt=render_messages(turns, self.engine.spring.tokenizer, placement, k), settings=settings)

    def _metadata(self, generation: Generation) -> dict[str, Any]:
        return {"model_name": self.model, "finish_reason": generation.finish_reason}

    def _result(self, generation: Generation) -> ChatResult:
        metadata = self._metadata(generation)
        message = AIMessage(
            content=generation.text, usage_metadata=usage_metadata(generation.usage), response_metadata=metadata
        )
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=dict(metadata))])

    def _last_chunk(self, stream: GenerationStream) -> ChatGenerationChunk:
        """The closing chunk: no text, the whole answer's usage and metadata (LangChain sums chunks)."""
        generation = finished(stream)
        message = AIMessageChunk(
            content="",
            usage_metadata=usage_metadata(generation.usage),
            response_metadata=self._metadata(generation),
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message)

    def _start_stream(self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                      run_manager: Any = None) -> GenerationStream:
        return self._open_stream(self._chat_request(messages, stop, kwargs, run_manager))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = self._chat_request(messages, stop, kwargs, run_manager)
        return self._result(self._complete_all([request])[0])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        # Loading, prompt rendering and generation all block: run them in a worker thread.
        request = await run_in_executor(None, self._chat_request, messages, stop, kwargs, run_manager)
        return self._result((await run_in_executor(None, self._complete_all, [request]))[0])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        stream = self._start_stream(messages, stop, kwargs, run_manager)
        for delta in self._deltas(stream):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            if run_manager is not None:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
        yield self._last_chunk(stream)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        # Loading, rendering and encoding block, so they run in a worker thread; so does the token stream.
        stream = await run_in_executor(None, self._start_stream, messages, stop, kwargs, run_manager)
        async for delta in iterate_in_thread(lambda: self._deltas(stream)):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            if run_manager is not None:
                await run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
        yield self._last_chunk(stream)
