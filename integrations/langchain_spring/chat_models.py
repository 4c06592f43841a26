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

import json
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
from langchain_core.messages.tool import ToolCallChunk, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.runnables.config import run_in_executor
from langchain_core.tools import BaseTool

from langchain_spring._base import SpringParams, finished, usage_metadata
from langchain_spring.tools import (
    check_tool_support,
    fallback_turns,
    generated_specials,
    native_prompt,
    parse_tool_calls,
    render_tool_prompt,
    template_tools,
    tool_definitions,
)
from langchain_spring.tracking import TRACKER
from spring_core import Generation, options
from spring_core.aio import iterate_in_thread
from spring_core.engine import Request
from spring_core.errors import InputError
from spring_core.generation import GenerationStream
from spring_core.prompts.layouts import has_chat_template, literal_text, render_chat
from spring_core.prompts.placement import Placement
from spring_core.types import BlockAt, PromptParts

_ROLES: dict[type[BaseMessage], str] = {SystemMessage: "system", HumanMessage: "user", AIMessage: "assistant"}


def message_turns(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """``[{"role", "content"}]`` for a chat template, text content only (a tool message's text blocks joined by
    blank lines); an AI message's tool calls go in its ``tool_calls`` (``[{"id", "type": "function", "function":
    {"name", "arguments"}}]``; a call without an id gets ``call_<n>``, ``n`` counting the conversation's calls) and
    a tool message becomes a ``tool`` turn with its ``tool_call_id`` and tool ``name``, as Hugging Face chat
    templates take them. Other content (images, audio, ...) raises ``InputError``."""
    turns: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for message in messages:
        turn: dict[str, Any] = {"role": _role(message), "content": _text(message)}
        if isinstance(message, AIMessage) and message.tool_calls:
            turn["tool_calls"] = [{"id": call.get("id") or f"call_{len(names) + i}", "type": "function",
                                   "function": {"name": call["name"], "arguments": call["args"]}}
                                  for i, call in enumerate(message.tool_calls)]
            names |= {c["id"]: c["function"]["name"] for c in turn["tool_calls"]}
        if isinstance(message, ToolMessage):
            turn["tool_call_id"] = message.tool_call_id
            turn["name"] = message.name or names.get(message.tool_call_id, "tool")
        turns.append(turn)
    return turns


def _role(message: BaseMessage) -> str:
    if isinstance(message, ChatMessage):
        return message.role
    if isinstance(message, ToolMessage):
        return "tool"
    role = next((name for kind, name in _ROLES.items() if isinstance(message, kind)), None)
    if role is None:
        raise InputError(f"ChatSpring cannot read a {type(message).__name__}; use system, human, AI or tool messages")
    return role


_AI_SKIPPED = ("reasoning", "thinking", "redacted_thinking")
"""Block types of an AI message (another provider's reasoning) that are not part of the conversation: a chat
template renders the answer's text, not the reasoning that led to it, so they are left out."""


def _text(message: BaseMessage) -> str:
    """The message's text; a tool message's text blocks are separate results, joined by blank lines. An AI message's
    reasoning blocks (``_AI_SKIPPED``) are left out; other content than text (images, audio, ...) is refused."""
    if isinstance(message.content, str):
        return message.content
    read = ("text", "tool_call", *(_AI_SKIPPED if isinstance(message, AIMessage) else ()))
    other = sorted({str(block.get("type")) for block in message.content
                    if isinstance(block, dict) and block.get("type") not in read})
    if other:
        raise InputError(f"ChatSpring reads text only; this {type(message).__name__} holds {', '.join(other)} "
                         "content: pass its text (or a description of it) as a text block")
    if not isinstance(message, ToolMessage):
        return message.text
    texts = [block if isinstance(block, str) else str(block.get("text", "")) for block in message.content
             if isinstance(block, str) or (isinstance(block, dict) and block.get("type") == "text")]
    return "\n\n".join(text for text in texts if text)


def render_messages(turns: Sequence[dict[str, Any]], tokenizer: Any, placement: Placement | None = None,
                    k: int = 0) -> PromptParts:
    """The prompt: the chat template with the assistant turn opened (else a ``Role: content`` transcript), with a
    ``k``-token block at ``placement``. Conversations with tool calls or results go through
    ``render_tool_messages``."""
    at = placement.at if placement is not None else None
    turns = restated(turns, placement, k)
    if has_chat_template(tokenizer):
        return render_chat(tokenizer, turns, at, k)
    return transcript(turns, tokenizer, at if k else None, k)


def restated(turns: Sequence[dict[str, Any]], placement: Placement | None, k: int) -> list[dict[str, Any]]:
    """The turns with a question-first prompt's question asked again after the block (``Placement.restate``)."""
    if placement is None or not placement.restated:
        return list(turns)
    texts = placement.restate([turn["content"] for turn in turns], k)
    return [{**turn, "content": text} for turn, text in zip(turns, texts, strict=True)]


def transcript(turns: Sequence[dict[str, Any]], tokenizer: Any, at: BlockAt | None, k: int) -> PromptParts:
    """``Role: content`` lines and ``Assistant:``, for a tokenizer without a chat template, with a ``k``-token
    block at ``at``. Every turn's text is ``literal_text`` (the two sides of the block each on its own, so the
    block stays where it was asked for): a special token's spelling in a message stays characters."""
    pieces: list[str] = []
    split = None
    for index, turn in enumerate(turns):
        content = str(turn["content"])
        pieces.append(literal_text(f"{str(turn['role']).capitalize()}: ", tokenizer))
        if at is not None and at.message == index:
            pieces.append(literal_text(content[:at.offset], tokenizer))
            split, content = len(pieces), content[at.offset:]
        pieces.append(literal_text(content, tokenizer) + "\n")
    pieces.append("Assistant:")
    if split is None:
        return PromptParts("".join(pieces))
    return PromptParts("".join(pieces[:split]), k, "".join(pieces[split:]))


def render_tool_messages(turns: Sequence[dict[str, Any]], tokenizer: Any, tools: Sequence[dict[str, Any]] | None,
                         k: int) -> PromptParts:
    """The prompt of a conversation with bound ``tools`` or tool turns (``langchain_spring.tools``): rendered by the
    chat template (its tool format, or the plain fallback); ending with tool results, a ``k``-token block after
    them (natively right before the answer; in the fallback before the question asked again)."""
    return render_tool_prompt(turns, tokenizer, tools, k, lambda plain, at, size: render_messages(
        plain, tokenizer, None if at is None else Placement(at), size))


def call_chunks(message: AIMessage) -> list[ToolCallChunk]:
    """The message's tool calls, then its invalid ones (arguments as written), as tool-call chunks, so that
    aggregated stream chunks hold the calls ``invoke`` returns (LangChain reads the calls back from the chunks; an
    invalid call whose raw arguments read as a JSON object, a cut-off one, comes back as a call there, as with any
    chat model)."""
    calls = [(c["name"], json.dumps(c["args"]), c["id"]) for c in message.tool_calls]
    calls += [(c["name"], c["args"], c["id"]) for c in message.invalid_tool_calls]
    return [tool_call_chunk(name=name, args=args, id=call_id, index=i) for i, (name, args, call_id) in enumerate(calls)]


class ChatSpring(SpringParams, BaseChatModel):
    """Chat model over ``spring_core.SpringModel``: a local Hugging Face LLM plus optional SPRING virtual tokens.

    Fields (LangChain names): ``model``, ``tokens``, ``k``, ``temperature``, ``max_tokens``, ``stop``,
    ``timeout``, ``max_retries``, ``model_kwargs``; ``spring_model=`` shares a ``SpringModel`` you loaded. The
    model loads on first use. Answers carry ``usage_metadata`` with real token counts: ``input_tokens`` includes
    the virtual tokens, which are also given as ``input_token_details["virtual"]``.

    Tool calling (``bind_tools``, ``with_structured_output``, agents such as ``create_agent(chat, [tool])``) works
    for a model whose chat template takes tools and writes calls in a format ``langchain_spring.tools`` reads
    (Hermes/Qwen ``<tool_call>``, Llama JSON, Mistral ``[TOOL_CALLS]``); other templates raise
    ``ToolCallingError`` at bind time, naming ``SpringRAGMiddleware`` (two-step RAG). When a conversation ends with
    tool results, they are the retrieved context: the block goes after them, right before the answer.

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
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: the chat template renders them (``apply_chat_template(tools=...)``) and the answer's tool
        calls are parsed into ``AIMessage.tool_calls``.

        Raises ``ToolCallingError`` (a ``NotImplementedError``) here, at bind time, when the model's chat template
        does not take tools; RAG then works without tools through ``SpringRAGMiddleware``. ``tool_choice`` is
        passed to nothing that enforces it (generation is not constrained): ``"none"`` leaves the tools out of the
        prompt, anything else lets the model choose.

        Example:
            >>> agent = create_agent(ChatSpring(model="my-qwen/"), [retrieve_context])  # doctest: +SKIP
        """
        check_tool_support(self.engine.spring.tokenizer)
        if tool_choice in ("none", False):
            return self.bind(**kwargs)
        return self.bind(tools=tool_definitions(tools), **kwargs)

    def with_structured_output(self, schema: Any, *, include_raw: bool = False,
                               **kwargs: Any) -> Runnable[LanguageModelInput, Any]:
        """Structured output through a tool call (LangChain's ``function_calling`` method), for a chat template that
        takes tools; ``ToolCallingError`` otherwise (see ``bind_tools``)."""
        check_tool_support(self.engine.spring.tokenizer, "with_structured_output")
        return super().with_structured_output(schema, include_raw=include_raw, **kwargs)

    # ----- generation ----------------------------------------------------------------------------------------

    def _chat_request(self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                      run_manager: Any = None) -> Request:
        kwargs = dict(kwargs)
        tools = kwargs.pop("tools", None)
        kwargs.pop("tool_choice", None)
        turns = message_turns(messages)
        if not turns:
            raise InputError("ChatSpring got an empty conversation (no messages): pass a string or at least one "
                             "message")
        if kwargs.get("documents") is not None:
            if [turn["role"] for turn in turns] != ["user"]:
                raise InputError(
                    "with documents=, ChatSpring builds the SPRING prompt itself: pass the question alone (a string "
                    f"or one human message), not {len(turns)} message(s) with roles {[t['role'] for t in turns]}"
                )
            return self._documents_request(turns[0]["content"], stop, kwargs)
        settings, k = self._call_settings(stop, kwargs)
        tokenizer = self.engine.spring.tokenizer
        rag_inputs = kwargs.get("rag_inputs")
        tool_turns = any(turn["role"] == "tool" or turn.get("tool_calls") for turn in turns)
        if turns and turns[-1]["role"] == "tool":  # agentic: the tool results that close the conversation are context
            n = self.engine.spring.n
            k = options.virtual_token_count(n if k is None else k, n)
            return Request(prompt=render_tool_messages(turns, tokenizer, tools, k), settings=settings)
        run_id = getattr(run_manager, "run_id", None) or TRACKER.run_for(messages)
        if tools or tool_turns:  # the context, if any, comes from rag_inputs or the run's signals, as without tools
            prompt = self._rag_tool_prompt(turns, tools, tool_turns, run_id, k, rag_inputs)
            return Request(prompt=prompt, settings=settings)
        placement, k = self._placement([t["content"] for t in turns], [t["role"] for t in turns], run_id, k,
                                       rag_inputs)
        return Request(prompt=render_messages(turns, tokenizer, placement, k), settings=settings)

    def _rag_tool_prompt(self, turns: list[dict[str, Any]], tools: Sequence[dict[str, Any]] | None,
                         tool_turns: bool, run_id: Any, k: int | None, rag_inputs: Any) -> PromptParts:
        """A call with tools bound or earlier tool turns (``tool_turns``), not closed by tool results: the block
        between the context and the question when it is a RAG call (``rag_inputs``, e.g. from
        ``SpringRAGMiddleware``, or the run's retrieval and template signals), as without tools; no block
        otherwise (an agent's first step). The chat template renders the tools (and the calls and results, when
        it can; else ``fallback_turns`` writes them)."""
        tokenizer = self.engine.spring.tokenizer
        native = not tool_turns or template_tools(tokenizer).native
        shown = turns if native else fallback_turns(turns)
        placement, k = self._placement([t["content"] for t in shown], [t["role"] for t in shown], run_id, k,
                                       rag_inputs)
        if not native:
            return render_messages(shown, tokenizer, placement, k)
        if placement is None:
            return native_prompt(turns, tokenizer, tools, 0)
        return native_prompt(restated(turns, placement, k), tokenizer, tools, k, placement.at)

    def _metadata(self, generation: Generation) -> dict[str, Any]:
        return {"model_name": self.model, "finish_reason": generation.finish_reason}

    def _tool_message(self, generation: Generation, tools: Sequence[dict[str, Any]]) -> AIMessage:
        """The answer with ``tools`` bound: the tool calls in it parsed (the template's format) into
        ``tool_calls``."""
        metadata = self._metadata(generation)
        usage = usage_metadata(generation.usage)
        tokenizer = self.engine.spring.tokenizer
        support = template_tools(tokenizer)
        raw, special = generation.text, [str(t) for t in tokenizer.all_special_tokens]
        if generation.token_ids:  # markers such as Mistral's [TOOL_CALLS] are special tokens, dropped from .text
            raw = tokenizer.decode(generation.token_ids, skip_special_tokens=False)
            special = generated_specials(tokenizer, generation.token_ids)
        names = [tool["function"]["name"] for tool in tools]
        content, calls, invalid = parse_tool_calls(raw, support.format or "hermes", names=names, special=special)
        if not calls and not invalid:
            content = generation.text
        return AIMessage(content=content, tool_calls=calls, invalid_tool_calls=invalid, usage_metadata=usage,
                         response_metadata=metadata)

    def _result(self, generation: Generation, tools: Sequence[dict[str, Any]] | None = None) -> ChatResult:
        message = self._tool_message(generation, tools) if tools else AIMessage(
            content=generation.text, usage_metadata=usage_metadata(generation.usage),
            response_metadata=self._metadata(generation))
        return ChatResult(generations=[ChatGeneration(message=message,
                                                      generation_info=dict(message.response_metadata))])

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

    def _whole_chunk(self, result: ChatResult, run_manager: Any) -> ChatGenerationChunk:
        message = result.generations[0].message
        assert isinstance(message, AIMessage)
        chunk = ChatGenerationChunk(message=AIMessageChunk(
            content=message.content, usage_metadata=message.usage_metadata, response_metadata=message.response_metadata,
            tool_call_chunks=call_chunks(message),
            chunk_position="last"))
        if run_manager is not None:
            run_manager.on_llm_new_token(str(message.content), chunk=chunk)
        return chunk

    def _start_stream(self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                      run_manager: Any = None) -> GenerationStream:
        return self._open_stream(self._chat_request(messages, stop, kwargs, run_manager))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = self._chat_request(messages, stop, kwargs, run_manager)
        return self._result(self._complete_all([request])[0], kwargs.get("tools"))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        # Loading, prompt rendering and generation all block: run them in a worker thread.
        request = await run_in_executor(None, self._chat_request, messages, stop, kwargs, run_manager)
        return self._result((await run_in_executor(None, self._complete_all, [request]))[0], kwargs.get("tools"))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        if kwargs.get("tools"):  # tool calls parse from the whole answer: one chunk
            yield self._whole_chunk(self._generate(messages, stop, run_manager, **kwargs), run_manager)
            return
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
        if kwargs.get("tools"):  # tool calls parse from the whole answer: one chunk
            chunk = self._whole_chunk(await self._agenerate(messages, stop, None, **kwargs), None)
            if run_manager is not None:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk
            return
        # Loading, rendering and encoding block, so they run in a worker thread; so does the token stream.
        stream = await run_in_executor(None, self._start_stream, messages, stop, kwargs, run_manager)
        async for delta in iterate_in_thread(lambda: self._deltas(stream)):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            if run_manager is not None:
                await run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
        yield self._last_chunk(stream)
