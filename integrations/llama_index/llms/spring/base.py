"""SpringLLM: a LlamaIndex ``CustomLLM`` over a local Hugging Face model with SPRING virtual tokens.

Prompts that carry the marker block ``[r1]..[rk]`` (the SPRING templates put it between the context and the
question) get the virtual tokens; prompts without it run the base model exactly as it is, so the same LLM object
also serves every non-RAG call of an app.

Example:
    >>> from llama_index.llms.spring import SpringLLM
    >>> llm = SpringLLM(model_name="smollm2-135m", tokens="my-tokens/", k=10)     # doctest: +SKIP
    >>> llm.complete("Paris is in France.\\n\\n[r1][r2]Question: Where is Paris?\\nAnswer:").text  # doctest: +SKIP

``mode`` (``concat``, ``rag-token``, ``rag-sequence``, ``rag-sequence-fast``) applies where the LLM receives the
retrieved passages one by one: ``SpringLLM.answer`` and the ``SpringSynthesizer`` that ``spring_query_engine``
uses for a marginal mode. LlamaIndex's own synthesizers (``compact``, ``refine``, ``tree_summarize``) repack the
nodes into one context string before the LLM sees them, so their prompts always run as ``concat``.
"""

from __future__ import annotations

import asyncio
import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.llms.generic_utils import (
    completion_response_to_chat_response,
    stream_completion_response_to_chat_response,
)
from llama_index.core.base.llms.generic_utils import messages_to_prompt as generic_messages_to_prompt
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.llm import default_completion_to_prompt

from spring_core import Generation, SpringModel
from spring_core.aio import iterate_in_thread
from spring_core.decoding import MODES
from spring_core.models import DEFAULT_MODEL
from spring_core.parametric.online import (
    PARAMETRIC_MODES,
    ParametricDocument,
    activated,
    check_parametric_mode,
    open_adapters,
    plan_call,
)
from spring_core.prompts import Passage, resize_block

_SETTINGS = ("max_new_tokens", "temperature", "top_p", "seed", "stop")


class SpringLLM(CustomLLM):
    """A local causal LM that reads SPRING virtual tokens at the marker block of its prompts.

    Fields follow LlamaIndex's ``HuggingFaceLLM`` (``model_name``, ``context_window``, ``max_new_tokens``,
    ``generate_kwargs``, ``model=``/``tokenizer=`` injection, ``device``) plus ``tokens`` (an artifact folder or a
    ``VirtualTokens``) and ``k`` (resize every prompt's marker block to ``k`` tokens; ``None`` keeps the block as
    written, ``0`` turns the tokens off). Per-call keyword arguments override ``generate_kwargs``: ``max_new_tokens``,
    ``temperature``, ``top_p``, ``seed``, ``stop`` and ``k``.

    ``prompt_layout="chat"`` wraps completion prompts in the tokenizer's chat template as one user turn (what
    instruct models such as SmolLM2 expect); by default it is the layout the tokens were trained with.

    ``mode`` picks how ``answer`` reads separate passages: ``concat`` (one prompt) or RAG-Token / RAG-Sequence
    marginal decoding, each passage weighted by ``softmax(score / weight_temperature)``. Prompts that arrive
    already packed (``complete``, ``chat``) always run as written.

    ``adapters`` (a folder from ``spring-rag parametrize``) with ``parametric_mode`` ``prag`` or ``combine`` makes
    ``answer`` activate the documents' adapters for that call only (``spring_query_engine`` with
    ``ParametricAdapterPostprocessor`` passes their ids); ``icl`` (the default) reads the passages as text.
    """

    model_name: str = Field(default=DEFAULT_MODEL, description="HF id, local folder, .gguf file or alias.")
    context_window: int = Field(default=0, description="Context length in tokens; 0 reads it from the model.")
    max_new_tokens: int = Field(default=256, description="Most tokens to generate per call.")
    generate_kwargs: dict[str, Any] = Field(default_factory=dict,
                                            description="Defaults for temperature, top_p, seed, stop.")
    tokens: Any = Field(default=None, description="Artifact folder or VirtualTokens; None for the plain model.")
    k: int | None = Field(default=None, description="Virtual tokens per prompt (None: as the prompt's block).")
    prompt_layout: str | None = Field(default=None, description="'raw' or 'chat'; default: the artifact's.")
    device: str | None = Field(default=None, description="'cpu', 'cuda', ...; default: CUDA when available.")
    strict: bool = Field(default=False, description="Raise on stray markers in prompts instead of warning.")
    mode: str = Field(default="concat", description="How answer() reads separate passages: " + ", ".join(MODES))
    weight_temperature: float = Field(default=1.0, gt=0, description="Passage weights: softmax(scores / this).")
    adapters: Any = Field(default=None, description="Parametric RAG: a folder from `spring-rag parametrize` "
                                                    "(PRAG store or Poly-PRAG experts), or loaded adapters.")
    parametric_mode: str = Field(default="icl", description="How answer() uses retrieved documents: "
                                                            + ", ".join(PARAMETRIC_MODES))
    missing_adapter: str = Field(default="error", description="A document without adapter: 'error' or 'icl' "
                                                              "(read its text instead, logged).")

    _spring: SpringModel = PrivateAttr()
    _adapters: Any = PrivateAttr(default=None)
    _warned_packed: bool = PrivateAttr(default=False)

    def __init__(self, *, model: Any = None, tokenizer: Any = None, spring_model: SpringModel | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if spring_model is None:
            spring_model = SpringModel.from_pretrained(
                self.model_name, self.tokens, device=self.device, model=model, tokenizer=tokenizer,
                layout=self.prompt_layout, strict=self.strict,
            )
        self._spring = spring_model
        if isinstance(self.adapters, (str, Path)):
            self._adapters = open_adapters(self.adapters, spring_model.model, model_name=self.model_name)
        else:
            self._adapters = self.adapters
        check_parametric_mode(self.parametric_mode, self._adapters)
        self.prompt_layout = self.prompt_layout or spring_model.layout
        if not self.context_window:
            self.context_window = int(getattr(spring_model.model.config, "max_position_embeddings", 2048))
        # partials of module functions, not bound methods: a field holding self would make repr() recurse
        if self.messages_to_prompt is None or self.messages_to_prompt is generic_messages_to_prompt:
            self.messages_to_prompt = functools.partial(chat_template_prompt, spring_model.tokenizer)
        if self.completion_to_prompt in (None, default_completion_to_prompt) and self.prompt_layout == "chat":
            self.completion_to_prompt = functools.partial(user_turn_prompt, spring_model.tokenizer)

    @classmethod
    def class_name(cls) -> str:
        return "SpringLLM"

    @property
    def spring_model(self) -> SpringModel:
        """The underlying ``SpringModel`` (shared model, tokenizer and virtual tokens)."""
        return self._spring

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window, num_output=self.max_new_tokens,
                           model_name=self._spring.name, is_chat_model=False)

    # ----- prompt handling -----------------------------------------------------------------------------------

    def _settings(self, kwargs: dict[str, Any], extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """Generation settings for one call: ``generate_kwargs`` overridden by the call's keyword arguments."""
        unknown = sorted(set(kwargs) - {*_SETTINGS, "k", *extra})
        if unknown:
            raise TypeError(f"SpringLLM got unknown keyword argument(s) {', '.join(unknown)}; "
                            f"it accepts {', '.join((*_SETTINGS, 'k', *extra))}")
        settings = {"max_new_tokens": self.max_new_tokens, **self.generate_kwargs, **kwargs}
        for key in ("k", *extra):
            settings.pop(key, None)
        return settings

    def _prepare(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The final prompt (block resized to ``k``) and the generation settings for one call."""
        settings = self._settings(kwargs)
        if not formatted:
            prompt = self.completion_to_prompt(prompt)
        k = kwargs.get("k", self.k)
        if k is not None:
            prompt = resize_block(prompt, self._spring.check_k(k), strict=self.strict)
        return prompt, settings

    def _warn_if_packed(self) -> None:
        if self.mode != "concat" and not self._warned_packed:
            self._warned_packed = True
            warnings.warn(
                f"SpringLLM(mode={self.mode!r}) got one finished prompt (e.g. from a compact, refine or "
                "tree_summarize synthesizer, which pack every node into one context), so it runs as 'concat'. "
                "To read the nodes one by one, build the engine with spring_query_engine(...) or pass "
                "SpringSynthesizer(llm=...) as its response_synthesizer",
                UserWarning,
                stacklevel=4,
            )

    # ----- separate passages ---------------------------------------------------------------------------------

    @llm_completion_callback()
    def answer(self, query: str, passages: Sequence[Passage], scores: Sequence[float | None] | None = None,
               adapter_ids: Sequence[str | None] | None = None, **kwargs: Any) -> CompletionResponse:
        """Answer ``query`` from ``passages`` read as separate passages with ``mode`` (per call: ``mode=``).

        LlamaIndex's instrumentation sees the call as a completion whose prompt is ``query``. ``scores`` are the
        retriever's (higher is better, e.g. ``NodeWithScore.score``); ``None`` or all-``None`` weighs the passages
        equally. ``adapter_ids`` name each passage's document adapter for ``parametric_mode`` ``prag`` /
        ``combine`` (per call: ``parametric_mode=``); they are active for this call only. Other keyword arguments:
        ``k`` and the generation settings of ``complete``.

        Example:
            >>> llm = SpringLLM(tokens="my-tokens/", mode="rag-token", k=10)                 # doctest: +SKIP
            >>> llm.answer("Who founded X?", ["X was founded by Y.", "Z is in W."], [0.8, 0.3]).text  # doctest: +SKIP
            'Y'
        """
        settings = self._settings(kwargs, extra=("mode", "parametric_mode"))
        mode, k = kwargs.get("mode", self.mode), kwargs.get("k", self.k)
        parametric_mode = kwargs.get("parametric_mode", self.parametric_mode)
        scores = list(scores) if scores is not None else [None] * len(passages)
        ids = list(adapter_ids) if adapter_ids is not None else [None] * len(passages)
        if not len(scores) == len(ids) == len(passages):
            raise ValueError(f"got {len(passages)} passages, {len(scores)} scores and {len(ids)} adapter ids; "
                             "give one of each per passage")
        documents = [ParametricDocument(i, p, s) for i, p, s in zip(ids, passages, scores, strict=True)]
        call = plan_call(self._adapters, documents, mode=parametric_mode, k=k, missing=self.missing_adapter)
        with activated(self._adapters, call.adapter_ids):
            generation = self._spring.generate(query, call.passages, call.k, mode=mode, scores=call.weights,
                                               weight_temperature=self.weight_temperature, **settings)
        return _response(generation)

    async def aanswer(self, query: str, passages: Sequence[Passage], scores: Sequence[float | None] | None = None,
                      adapter_ids: Sequence[str | None] | None = None, **kwargs: Any) -> CompletionResponse:
        """``answer`` in a worker thread (which keeps this task's context), so the event loop keeps going."""
        return await asyncio.to_thread(self.answer, query, passages, scores, adapter_ids, **kwargs)

    # ----- completion ----------------------------------------------------------------------------------------

    def _run(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> CompletionResponse:
        self._warn_if_packed()
        prompt, settings = self._prepare(prompt, formatted, kwargs)
        return _response(self._spring.generate_from_prompt(prompt, **settings))

    def _run_stream(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> CompletionResponseGen:
        self._warn_if_packed()
        prompt, settings = self._prepare(prompt, formatted, kwargs)
        stream = self._spring.stream_from_prompt(prompt, **settings)
        text = ""
        for delta in stream:
            text += delta
            yield CompletionResponse(text=text, delta=delta)
        if stream.result is not None:  # a last, empty delta carries the usage of the whole answer
            yield _response(stream.result, delta="")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._run(prompt, formatted, kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._run_stream(prompt, formatted, kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._run, prompt, formatted, kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        return iterate_in_thread(lambda: self._run_stream(prompt, formatted, kwargs))

    # ----- chat ----------------------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return completion_response_to_chat_response(self._run(self.messages_to_prompt(messages), True, kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return stream_completion_response_to_chat_response(
            self._run_stream(self.messages_to_prompt(messages), True, kwargs)
        )

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        response = await asyncio.to_thread(self._run, self.messages_to_prompt(messages), True, kwargs)
        return completion_response_to_chat_response(response)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        prompt = self.messages_to_prompt(messages)
        return iterate_in_thread(
            lambda: stream_completion_response_to_chat_response(self._run_stream(prompt, True, kwargs))
        )


def chat_template_prompt(tokenizer: Any, messages: Sequence[ChatMessage]) -> str:
    """Messages rendered with the tokenizer's chat template (LlamaIndex's generic transcript without one)."""
    if not getattr(tokenizer, "chat_template", None):
        return generic_messages_to_prompt(messages)
    turns = [{"role": m.role.value, "content": m.content or ""} for m in messages]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def user_turn_prompt(tokenizer: Any, completion: str) -> str:
    """A completion prompt as the one user turn of a chat, with the assistant turn opened."""
    return chat_template_prompt(tokenizer, [ChatMessage(role="user", content=completion)])


def _response(generation: Generation, delta: str | None = None) -> CompletionResponse:
    usage = generation.usage
    counts = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "virtual_tokens": usage.virtual_tokens,
        "total_tokens": usage.total_tokens,
    }
    return CompletionResponse(
        text=generation.text,
        delta=delta,
        raw={"usage": counts, "finish_reason": generation.finish_reason},
        additional_kwargs=counts,
    )
