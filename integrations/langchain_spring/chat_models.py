"""``ChatSpring``: a LangChain chat model over a local Hugging Face LLM that reads SPRING virtual tokens.

Messages are rendered with the tokenizer's chat template (``add_generation_prompt=True``); a model without one
gets a plain ``Role: content`` transcript. A marker block ``[r1]..[rk]`` written in a message survives the
rendering and is spliced in by ``SpringModel``, so ``SPRING_RAG_CHAT_PROMPT`` (context, block, question in one
user turn) gives exactly the chat layout the tokens are trained in.

Example:
    >>> from langchain_spring import ChatSpring, SPRING_RAG_CHAT_PROMPT
    >>> chat = ChatSpring(model="smollm2-135m", tokens="my-tokens/", max_tokens=32)      # doctest: +SKIP
    >>> chain = SPRING_RAG_CHAT_PROMPT | chat                                             # doctest: +SKIP
    >>> chain.invoke({"context": "[1] Harvard is named after John Harvard.",
    ...               "question": "Who is Harvard named after?"}).content                 # doctest: +SKIP
    'John Harvard'
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
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

from langchain_spring._base import SpringParams, SpringRequest, finished, usage_metadata
from spring_core import Generation
from spring_core.aio import iterate_in_thread
from spring_core.spring_model import GenerationStream

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


def render_messages(turns: Sequence[dict[str, str]], tokenizer: Any) -> str:
    """The prompt text: the chat template with the assistant turn opened, else a ``Role: content`` transcript."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(turns), tokenize=False, add_generation_prompt=True)
    lines = [f"{turn['role'].capitalize()}: {turn['content']}" for turn in turns]
    return "\n".join([*lines, "Assistant:"])


class ChatSpring(SpringParams, BaseChatModel):
    """Chat model over ``spring_core.SpringModel``: a local Hugging Face LLM plus optional SPRING virtual tokens.

    Fields (LangChain names): ``model``, ``tokens``, ``k``, ``temperature``, ``max_tokens``, ``stop``,
    ``timeout``, ``max_retries``, ``model_kwargs``; ``spring_model=`` shares a ``SpringModel`` you loaded. The
    model loads on first use. Answers carry ``usage_metadata`` with real token counts: ``input_tokens`` includes
    the virtual tokens, which are also given as ``input_token_details["virtual"]``. Tool calling and structured
    output are not supported.

    ``invoke(question, documents=docs)`` answers from retrieved documents read as separate passages, with the
    field ``mode`` (``concat``, ``rag-token``, ``rag-sequence``, ``rag-sequence-fast``; per call: ``mode=``) and
    each document's ``metadata["score"]`` as its retriever score; ``create_spring_rag_chain`` does this for a
    marginal ``mode``.

    Example:
        >>> from langchain_spring import ChatSpring
        >>> chat = ChatSpring(model="smollm2-135m", tokens="my-tokens/", max_tokens=32)   # doctest: +SKIP
        >>> chat.invoke("Hello").usage_metadata                                            # doctest: +SKIP
        {'input_tokens': 31, 'output_tokens': 10, 'total_tokens': 41, 'input_token_details': {'virtual': 0}}
        >>> for chunk in chat.stream("Hello"): print(chunk.content, end="")               # doctest: +SKIP
    """

    streaming: bool = False
    """Make ``invoke`` go through the token stream (LangChain's convention)."""

    @property
    def _llm_type(self) -> str:
        return "spring-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._spring_ls_params("chat", stop, kwargs)

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

    def _chat_request(self, messages: Sequence[BaseMessage], stop: list[str] | None,
                      kwargs: dict[str, Any]) -> SpringRequest:
        turns = message_turns(messages)
        if kwargs.get("documents") is not None:
            if [turn["role"] for turn in turns] != ["user"]:
                raise ValueError(
                    "with documents=, ChatSpring builds the SPRING prompt itself: pass the question alone (a string "
                    f"or one human message), not {len(turns)} message(s) with roles {[t['role'] for t in turns]}"
                )
            return self._request(turns[0]["content"], stop, kwargs)
        prompt = render_messages(turns, self.spring.tokenizer)
        return self._request(prompt, stop, kwargs, checked_text="\n".join(t["content"] for t in turns))

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

    def _start_stream(self, messages: Sequence[BaseMessage], stop: list[str] | None,
                      kwargs: dict[str, Any]) -> GenerationStream:
        return self._open_stream(self._chat_request(messages, stop, kwargs))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = self._chat_request(messages, stop, kwargs)
        return self._result(self._complete_all([request])[0])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        # Loading, prompt rendering and generation all block: run them in a worker thread.
        return await run_in_executor(None, self._generate, messages, stop, None, **kwargs)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        stream = self._start_stream(messages, stop, kwargs)
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
        stream = await run_in_executor(None, self._start_stream, messages, stop, kwargs)
        async for delta in iterate_in_thread(lambda: self._deltas(stream)):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            if run_manager is not None:
                await run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
        yield self._last_chunk(stream)
