"""SpringLLM: a LlamaIndex ``CustomLLM`` over a local Hugging Face model with SPRING virtual tokens.

Swap it in and every RAG call reads context, then ``[r1]..[rk]``, then the question, whatever template the engine
uses. LlamaIndex hands the LLM each prompt template with its variables (``predict``, ``stream``, ``apredict``,
``astream``: every response synthesizer and chat engine goes through them), so ``SpringLLM`` knows exactly where
the context (``context_str``, ``context_msg``) and the question (``query_str``) sit and places the block by the
rules of ``spring_core.prompts.placement``: at the start of the question's line, after the context. Calls
without a context variable, and ``complete`` / ``chat`` on text, run the base model exactly as it is. Text is never
searched for markers: a node or query that holds ``[r1]`` is read as characters.

Example:
    >>> from llama_index.core import Settings, VectorStoreIndex
    >>> from llama_index.llms.spring import SpringLLM
    >>> llm = SpringLLM(model_name="my-llama/", tokens="my-tokens/", k=10, max_new_tokens=4)  # or smollm2-135m-squad
    >>> # Settings.llm = llm makes it every engine's LLM; here it is this engine's:
    >>> response = index.as_query_engine(llm=llm).query("Who is Harvard named after?")
    >>> response.metadata["spring_usage"]["virtual_tokens"]
    10

``decoding`` (``stuff``, ``rag-token``, ``rag-sequence``, ``rag-sequence-fast``) applies where the LLM receives the
retrieved passages one by one: ``SpringLLM.answer`` and the ``SpringSynthesizer`` that ``spring_query_engine``
uses for a marginal decoding. LlamaIndex's own synthesizers (``compact``, ``refine``, ``tree_summarize``) repack the
nodes into one context string before the LLM sees them, so their prompts always run as ``stuff``.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
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
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import (
    LLMPredictEndEvent,
    LLMPredictStartEvent,
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.llm import (
    astream_completion_response_to_tokens,
    default_completion_to_prompt,
    stream_completion_response_to_tokens,
)
from llama_index.core.output_parsers import PydanticOutputParser
from llama_index.core.prompts import BasePromptTemplate, ChatPromptTemplate, SelectorPromptTemplate
from llama_index.core.types import Model, PydanticProgramMode, TokenAsyncGen, TokenGen
from llama_index.llms.spring.prompts import BLOCK_SIZE_KEY
from llama_index.llms.spring.usage import install_query_usage

from spring_core import Generation, SpringModel, options
from spring_core.aio import iterate_in_thread
from spring_core.engine import Engine, Request
from spring_core.errors import OptionError
from spring_core.model.loading import DEFAULT_MODEL, DEFAULT_POOL
from spring_core.parametric.online import ParametricDocument, check_knowledge, open_adapters
from spring_core.prompts.layouts import has_chat_template, literal_text, render_chat, unique_sentinel
from spring_core.prompts.placement import Span, fill_placeholders, place_block
from spring_core.serving.thin import is_thin, refuse, thin_spring_model
from spring_core.serving.vllm import as_backend, serves_remotely
from spring_core.types import Passage, PromptParts

CONTEXT_VARIABLES = ("context_str", "context_msg")
"""Template variables that hold retrieved context (LlamaIndex's names, in every synthesizer and chat engine)."""
QUERY_VARIABLES = ("query_str",)
"""Template variables that hold the question."""

RAG_LOOKING = re.compile(r"(?is)\b(?:context|documents?|passages?|sources?)\b[^\n]*[:.]\s*\n.+"
                         r"\b(?:query|question)\b")
"""A string that names its context on one line and asks a query or question later (e.g. LlamaIndex's text-QA
wording, written out by hand with an f-string)."""

dispatcher = get_dispatcher(__name__)
logger = logging.getLogger(__name__)


class SpringLLM(CustomLLM):
    """A local causal LM that reads SPRING virtual tokens between the context and the question of RAG prompts.

    Fields follow LlamaIndex's ``HuggingFaceLLM`` (``model_name``, ``context_window``, ``max_new_tokens``,
    ``generate_kwargs``, ``model=``/``tokenizer=`` injection, ``device``) plus ``tokens`` (an artifact folder, a
    bundled name or a ``VirtualTokens``) and ``k`` (virtual tokens per RAG prompt; ``None``: all ``n``, ``0``: none).
    Per-call keyword arguments override ``generate_kwargs``: ``max_new_tokens``, ``temperature``, ``top_p``,
    ``seed``, ``stop``.

    ``layout="chat"`` wraps completion prompts in the tokenizer's chat template as one user turn (what
    instruct models such as SmolLM2 expect); by default it is the layout the tokens were trained with.

    ``decoding`` picks how ``answer`` reads separate passages: ``stuff`` (one prompt) or RAG-Token / RAG-Sequence
    marginal decoding, each passage weighted by ``softmax(score / weight_temperature)``.

    ``adapters`` (a folder from ``spring-rag parametrize``) with ``knowledge`` ``prag`` or ``combine`` makes
    ``answer`` activate the documents' adapters for that call only (``spring_query_engine`` with
    ``ParametricAdapterPostprocessor`` passes their ids); ``icl`` (the default) reads the passages as text.

    Example:
        >>> from llama_index.core import PromptTemplate
        >>> llm = SpringLLM(model_name="my-llama/", tokens="my-tokens/", k=10, max_new_tokens=4)  # or smollm2-135m
        >>> answer = llm.predict(PromptTemplate("{context_str}\\nQuery: {query_str}\\nAnswer:"),
        ...                      context_str="Paris is in France.", query_str="Where is Paris?")
        >>> isinstance(answer, str)
        True
    """

    model_name: str = Field(default=DEFAULT_MODEL, description="HF id, local folder, .gguf file or alias.")
    context_window: int = Field(default=0, description="Context length in tokens; 0 reads it from the model.")
    max_new_tokens: int = Field(default=256, description="Most tokens to generate per call.")
    generate_kwargs: dict[str, Any] = Field(default_factory=dict,
                                            description="Defaults for temperature, top_p, seed, stop.")
    tokens: Any = Field(default=None, description="Artifact folder or VirtualTokens; None for the plain model.")
    k: int | None = Field(default=None, ge=0, description="Virtual tokens per RAG prompt (None: all of them).")
    layout: str | None = Field(default=None, description="'raw' or 'chat'; default: the artifact's.")
    device: str | None = Field(default=None, description="'cpu', 'cuda', ...; default: CUDA when available.")
    decoding: str = Field(default="stuff",
                      description="How answer() reads separate passages: " + ", ".join(options.DECODINGS))
    weight_temperature: float = Field(default=1.0, gt=0, description="Passage weights: softmax(scores / this).")
    adapters: Any = Field(default=None, description="Parametric RAG: a folder from `spring-rag parametrize` "
                                                    "(PRAG store or Poly-PRAG experts), or loaded adapters.")
    knowledge: str = Field(default="icl", description="How answer() uses retrieved documents: "
                                                            + ", ".join(options.KNOWLEDGE))
    missing_adapter: str = Field(default="error", description="A document without adapter: 'error' or 'icl' "
                                                              "(read its text instead, logged).")
    backend: Any = Field(default=None, description="Where generation runs: None (in process), a vLLM server URL "
                                                   "or a spring_core.serving.VLLMBackend.")
    api_key: str | None = Field(default=None, exclude=True, repr=False,
                                description="The key of a server backend given as a URL (its --api-key); "
                                            "default: the VLLM_API_KEY environment variable.")

    _engine: Engine = PrivateAttr()
    _warned: set[str] = PrivateAttr(default_factory=set)
    _template_renderers: tuple[Any, ...] = PrivateAttr(default=())
    """The ``messages_to_prompt`` / ``completion_to_prompt`` this LLM installed that render through the chat
    template (which writes the template's own special tokens, a BOS included); a user's own renderers are not."""

    def __init__(self, *, model: Any = None, tokenizer: Any = None, spring_model: SpringModel | None = None,
                 **kwargs: Any):
        _check_fields(kwargs)
        super().__init__(**kwargs)
        install_query_usage()
        if spring_model is None and model is None and tokenizer is None and serves_remotely(self.backend):
            # the server runs the layers: a thin client (tokenizer + input-embedding rows, spring_core.serving.thin)
            spring_model = thin_spring_model(self.model_name, self.tokens, layout=self.layout)
        elif spring_model is None:
            if model is None and tokenizer is None:
                model, tokenizer = DEFAULT_POOL.get(self.model_name, self.device)
            spring_model = SpringModel.from_pretrained(self.model_name, self.tokens, device=self.device, model=model,
                                                       tokenizer=tokenizer, layout=self.layout)
        adapters = self.adapters
        if isinstance(adapters, (str, Path)):
            if is_thin(spring_model.model):
                refuse(f"adapters={str(adapters)!r}")
            adapters = open_adapters(adapters, spring_model.model, model_name=self.model_name)
        check_knowledge(self.knowledge, adapters)
        if self.k is not None:
            options.virtual_token_count(self.k, spring_model.n)
        self._engine = Engine(spring_model, adapters, as_backend(self.backend, api_key=self.api_key))
        self.layout = self.layout or spring_model.layout
        if not self.context_window:
            self.context_window = int(getattr(spring_model.model.config, "max_position_embeddings", 2048))
        # partials of module functions, not bound methods: a field holding self would make repr() recurse
        renderers = []
        if self.messages_to_prompt is None or self.messages_to_prompt is generic_messages_to_prompt:
            self.messages_to_prompt = functools.partial(chat_template_prompt, spring_model.tokenizer)
            renderers.append(self.messages_to_prompt)
        if self.completion_to_prompt in (None, default_completion_to_prompt) and self.layout == "chat":
            self.completion_to_prompt = functools.partial(user_turn_prompt, spring_model.tokenizer)
            renderers.append(self.completion_to_prompt)
        if has_chat_template(spring_model.tokenizer):
            self._template_renderers = tuple(renderers)

    @classmethod
    def class_name(cls) -> str:
        return "SpringLLM"

    @property
    def spring_model(self) -> SpringModel:
        """The underlying ``SpringModel`` (shared model, tokenizer and virtual tokens)."""
        return self._engine.spring

    @property
    def adapter_set(self) -> Any:
        """The document adapters in use (opened from ``adapters``), or ``None``."""
        return self._engine.adapters

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window, num_output=self.max_new_tokens,
                           model_name=self._engine.spring.name, is_chat_model=False)

    # ----- where the block goes ------------------------------------------------------------------------------

    def rag_prompt(self, prompt: BasePromptTemplate, **prompt_args: Any) -> PromptParts | None:
        """The prompt ``predict(prompt, **prompt_args)`` sends: with the block placed, or with ``k == 0`` when the
        call uses no virtual tokens (or the question cannot be found); ``None`` when the call is not a RAG call (no
        context variable) or its template cannot be read (then LlamaIndex formats it, as for any other LLM).

        Each variable is rendered as a random sentinel first, so the context and the question are located in the
        template's own output; their values are put in afterwards (``literal_text``: a value that spells a special
        token is read as characters, with or without a block) and never searched. A template that does not put the
        values in as they are (a ``RichPromptTemplate`` filter or slice, ``function_mappings``) is rendered a
        second time with the values to find out, and then runs without virtual tokens (warned once).
        """
        variables = {**getattr(prompt, "kwargs", {}), **prompt_args}
        if not any(str(variables.get(name) or "") for name in CONTEXT_VARIABLES):
            return None
        selected = prompt.select(self) if isinstance(prompt, SelectorPromptTemplate) else prompt
        spring = self._engine.spring
        metadata = getattr(selected, "metadata", None) or {}
        if BLOCK_SIZE_KEY in metadata:  # the template's own setting: checked here, where it enters
            k = options.virtual_token_count(metadata[BLOCK_SIZE_KEY], spring.n, BLOCK_SIZE_KEY)
        else:
            k = spring.n if self.k is None else self.k  # checked by the engine, once
        mapped = bool(getattr(selected, "function_mappings", None))  # they may not even take a sentinel
        sentinels = {name: unique_sentinel(str(v) for v in variables.values()) for name in variables}
        rendered = "" if mapped else self._get_prompt(prompt, **sentinels)
        # the values' own edge spaces aside (a RichPromptTemplate chat block strips them), each must go in as it is
        values = {name: literal_text(str(value).strip(), spring.tokenizer) for name, value in variables.items()}
        verbatim = rendered
        for name, sentinel in sentinels.items():
            verbatim = verbatim.replace(sentinel, values[name])
        if mapped or self._get_prompt(prompt, **values) != verbatim:
            if k:  # e.g. a RichPromptTemplate's {{ query_str | upper }}
                self._warn_once("transformed", "this prompt template computes or changes its variables' values "
                                "(function_mappings, a filter, a slice, ...), so SpringLLM cannot tell where the "
                                "context ends: it runs without virtual tokens")
            return None
        text, spans = fill_placeholders(rendered, sentinels, variables, spring.tokenizer)
        renderer = self.messages_to_prompt if isinstance(selected, ChatPromptTemplate) else self.completion_to_prompt
        # the chat template's render holds its special tokens, unless something was put in front of it
        special = not self._renders_chat(renderer) or bool(self.system_prompt or self.query_wrapper_prompt)
        context = [Span(0, start, end) for name, start, end in spans if name in CONTEXT_VARIABLES]
        questions = [Span(0, start, end) for name, start, end in spans if name in QUERY_VARIABLES]
        if isinstance(selected, ChatPromptTemplate):  # chat engines format the history too: a {query_str} a user
            questions = questions[-1:]  # typed in an earlier turn is not the question, the last one is
        placement = place_block([text], context, questions) if k else None
        if placement is None:
            return PromptParts(text, special_tokens=special)
        if placement.question_first and "question_first" not in self._warned:  # common (rlm/rag-prompt, refine)
            self._warned.add("question_first")  # and it still works, so it is logged, not warned
            logger.info("this RAG template states the question before the context, an order SPRING's tokens were not "
                        "trained on; the block goes right after the context")
        offset = placement.at.offset
        return PromptParts(text[:offset], k, text[offset:], special_tokens=special)

    def _renders_chat(self, renderer: Any) -> bool:
        """Whether ``renderer`` (``messages_to_prompt`` or ``completion_to_prompt``) writes the chat template's
        special tokens into the text, so none are added when it is encoded."""
        return any(renderer is ours for ours in self._template_renderers)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=4)

    # ----- template calls (every synthesizer and chat engine) --------------------------------------------------

    @dispatcher.span
    def predict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        parts = self.rag_prompt(prompt, **prompt_args)
        if parts is None:
            return super().predict(prompt, **prompt_args)
        self._predict_start(prompt, prompt_args)
        output = self._parse_output(self.complete(parts, formatted=True).text)
        dispatcher.event(LLMPredictEndEvent(output=output))
        return output

    @dispatcher.span
    def stream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenGen:
        parts = self.rag_prompt(prompt, **prompt_args)
        if parts is None:
            return super().stream(prompt, **prompt_args)
        self._predict_start(prompt, prompt_args)
        self._refuse_output_parser(prompt)
        return stream_completion_response_to_tokens(
            self.stream_complete(parts, formatted=True))

    @dispatcher.span
    async def apredict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        parts = self.rag_prompt(prompt, **prompt_args)
        if parts is None:
            return await super().apredict(prompt, **prompt_args)
        self._predict_start(prompt, prompt_args)
        response = await self.acomplete(parts, formatted=True)
        output = self._parse_output(response.text)
        dispatcher.event(LLMPredictEndEvent(output=output))
        return output

    @dispatcher.span
    async def astream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenAsyncGen:
        parts = self.rag_prompt(prompt, **prompt_args)
        if parts is None:
            return await super().astream(prompt, **prompt_args)
        self._predict_start(prompt, prompt_args)
        self._refuse_output_parser(prompt)
        stream = await self.astream_complete(parts, formatted=True)
        return await astream_completion_response_to_tokens(stream)

    def _predict_start(self, prompt: BasePromptTemplate, prompt_args: dict[str, Any]) -> None:
        dispatcher.event(LLMPredictStartEvent(template=prompt, template_args=prompt_args))
        self._log_template_data(prompt, **prompt_args)
        if self.decoding != "stuff":
            self._warn_once("packed", f"SpringLLM(decoding={self.decoding!r}) got one finished prompt (e.g. from a "
                            "compact, refine or tree_summarize synthesizer, which pack every node into one context), "
                            "so it runs as 'stuff'. To read the nodes one by one, build the engine with "
                            "spring_query_engine(...) or pass SpringSynthesizer(llm=...) as its response_synthesizer")

    def _refuse_output_parser(self, prompt: BasePromptTemplate) -> None:
        if prompt.output_parser is not None or self.output_parser is not None:
            raise NotImplementedError("Output parser is not supported for streaming.")

    # ----- structured output (LlamaIndex's text-completion program, as refine's answer filtering uses it) -----

    @dispatcher.span
    def structured_predict(self, output_cls: type[Model], prompt: BasePromptTemplate,
                           llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Model:
        """``LLM.structured_predict``: the template with a JSON-schema output parser, completed and parsed into
        ``output_cls``; a RAG template gets the block as ``predict`` places it (LlamaIndex's own program formats
        the template into a string first, which has no structure left)."""
        structured = self._structured_rag_prompt(output_cls, prompt, prompt_args)
        if structured is None:
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        parser, parts = structured
        dispatcher.event(LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt,
                                                        template_args=prompt_args))
        result = parser.parse(self.complete(parts, formatted=True, **(llm_kwargs or {})).text)
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    @dispatcher.span
    async def astructured_predict(self, output_cls: type[Model], prompt: BasePromptTemplate,
                                  llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Model:
        """Async twin of ``structured_predict``."""
        structured = self._structured_rag_prompt(output_cls, prompt, prompt_args)
        if structured is None:
            return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        parser, parts = structured
        dispatcher.event(LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt,
                                                        template_args=prompt_args))
        result = parser.parse((await self.acomplete(parts, formatted=True, **(llm_kwargs or {}))).text)
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    def _structured_rag_prompt(self, output_cls: type[Model], prompt: BasePromptTemplate,
                               prompt_args: dict[str, Any]) -> tuple[PydanticOutputParser, PromptParts] | None:
        """The output parser and the placed prompt of a structured RAG call; ``None`` when it is not one (or a
        ``pydantic_program_mode`` other than the default program was asked for)."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return None
        parser = PydanticOutputParser(output_cls=output_cls)
        selected = prompt.select(self) if isinstance(prompt, SelectorPromptTemplate) else prompt
        shown = selected.model_copy(update={"output_parser": parser})  # the caller's template stays as it was
        parts = self.rag_prompt(shown, **prompt_args)
        return None if parts is None else (parser, parts)

    # ----- separate passages ---------------------------------------------------------------------------------

    @llm_completion_callback()
    def answer(self, query: str, passages: Sequence[Passage], scores: Sequence[float | None] | None = None,
               adapter_ids: Sequence[str | None] | None = None, sources: Sequence[Passage | None] | None = None,
               **kwargs: Any) -> CompletionResponse:
        """Answer ``query`` from ``passages`` read as separate passages with ``decoding`` (per call: ``decoding=``).

        LlamaIndex's instrumentation sees the call as a completion whose prompt is ``query``. ``scores`` are the
        retriever's (higher is better, e.g. ``NodeWithScore.score``); ``None`` or all-``None`` weighs the passages
        equally. ``adapter_ids`` name each passage's document adapter for ``knowledge`` ``prag`` /
        ``combine`` (per call: ``knowledge=``); they are active for this call only. ``sources``: what a DyPRAG
        translator reads of each passage's document when not the passage (``SpringSynthesizer`` passes the nodes'
        titles and texts). Other keyword arguments: ``k`` and the generation settings of ``complete``.

        Example:
            >>> llm = SpringLLM(model_name="my-llama/", tokens="my-tokens/", decoding="rag-token", k=10,
            ...                 max_new_tokens=4)
            >>> response = llm.answer("Who founded X?", ["X was founded by Y.", "Z is in W."], [0.8, 0.3])
            >>> response.additional_kwargs["virtual_tokens"]  # 10 per passage ('Y' with trained tokens)
            20
        """
        return _response(self._engine.generate(self._answer_request(query, passages, scores, adapter_ids, sources,
                                                                    kwargs)))

    def _answer_request(self, query: str, passages: Sequence[Passage], scores: Sequence[float | None] | None,
                        adapter_ids: Sequence[str | None] | None, sources: Sequence[Passage | None] | None,
                        kwargs: dict[str, Any]) -> Request:
        settings = self._settings(kwargs, extra=("k", "decoding", "knowledge"))
        passages = options.passages(passages, required=True)
        scores = list(scores) if scores is not None else [None] * len(passages)
        ids = list(adapter_ids) if adapter_ids is not None else [None] * len(passages)
        sources = list(sources) if sources is not None else [None] * len(passages)
        if not len(scores) == len(ids) == len(sources) == len(passages):
            raise OptionError(f"got {len(passages)} passages, {len(scores)} scores, {len(ids)} adapter ids and "
                              f"{len(sources)} sources; give one of each per passage")
        documents = [ParametricDocument(doc_id, passage, score, source=source)
                     for doc_id, passage, score, source in zip(ids, passages, scores, sources, strict=True)]
        return Request(question=query, documents=documents, k=kwargs.get("k", self.k),
                       decoding=kwargs.get("decoding", self.decoding),
                       knowledge=kwargs.get("knowledge", self.knowledge),
                       missing_adapter=self.missing_adapter, weight_temperature=self.weight_temperature,
                       settings=settings)

    @llm_completion_callback()
    async def aanswer(self, query: str, passages: Sequence[Passage], scores: Sequence[float | None] | None = None,
                      adapter_ids: Sequence[str | None] | None = None, sources: Sequence[Passage | None] | None = None,
                      **kwargs: Any) -> CompletionResponse:
        """Async twin of ``answer`` (awaited on a server backend; in process it runs in a worker thread)."""
        return _response(await self._engine.agenerate(self._answer_request(query, passages, scores, adapter_ids,
                                                                          sources, kwargs)))

    # ----- completion ----------------------------------------------------------------------------------------

    def _settings(self, kwargs: dict[str, Any], extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """Generation settings for one call: ``generate_kwargs`` overridden by the call's keyword arguments."""
        unknown = sorted(set(kwargs) - {*options.SETTINGS, *extra})
        if unknown:
            raise OptionError(f"SpringLLM got unknown keyword argument(s) {', '.join(unknown)}; "
                            f"it accepts {', '.join((*options.SETTINGS, *extra))}")
        settings = {"max_new_tokens": self.max_new_tokens, **self.generate_kwargs, **kwargs}
        for key in extra:
            settings.pop(key, None)
        return settings

    def _request(self, prompt: str | PromptParts, formatted: bool, kwargs: dict[str, Any]) -> Request:
        """A finished prompt: ``PromptParts`` (placed by ``predict``) as they are, a string as plain text."""
        if not formatted and isinstance(prompt, str) and RAG_LOOKING.search(prompt):
            self._warn_once("plain_rag", "SpringLLM.complete got a plain string that looks like a RAG prompt; a "
                            "string has no structure, so it runs without virtual tokens. For the block, send the "
                            "template and its variables: llm.predict / llm.apredict(PromptTemplate(...), "
                            "context_str=..., query_str=...), or a response synthesizer")
        if not isinstance(prompt, PromptParts):
            chat = not formatted and self._renders_chat(self.completion_to_prompt)
            prompt = PromptParts(prompt if formatted else self.completion_to_prompt(prompt), special_tokens=not chat)
        return Request(prompt=prompt, settings=self._settings(kwargs))

    def _run_stream(self, request: Request) -> CompletionResponseGen:
        stream = self._engine.stream(request)
        text = ""
        for delta in stream:
            text += delta
            yield CompletionResponse(text=text, delta=delta)
        if stream.result is not None:  # a last, empty delta carries the usage of the whole answer
            yield _response(stream.result, request.prompt, delta="")

    @llm_completion_callback()
    def complete(self, prompt: str | PromptParts, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete ``prompt``: a string is plain text (no virtual tokens, whatever it holds); ``PromptParts``
        (what ``predict`` builds for RAG templates) are sent with their block. LlamaIndex's instrumentation shows
        the prompt as ``str(parts)``, the block written ``[r1]..[rk]``; the response's ``raw["prompt_parts"]``
        holds the ``PromptParts`` sent."""
        request = self._request(prompt, formatted, kwargs)
        return _response(self._engine.generate(request), request.prompt)

    @llm_completion_callback()
    def stream_complete(self, prompt: str | PromptParts, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponseGen:
        return self._run_stream(self._request(prompt, formatted, kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str | PromptParts, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        request = self._request(prompt, formatted, kwargs)
        return _response(await self._engine.agenerate(request), request.prompt)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str | PromptParts, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        request = self._request(prompt, formatted, kwargs)
        return iterate_in_thread(lambda: self._run_stream(request))

    # ----- chat ----------------------------------------------------------------------------------------------

    def _chat_request(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> Request:
        prompt = PromptParts(self.messages_to_prompt(messages),
                             special_tokens=not self._renders_chat(self.messages_to_prompt))
        return Request(prompt=prompt, settings=self._settings(kwargs))

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request = self._chat_request(messages, kwargs)
        return completion_response_to_chat_response(_response(self._engine.generate(request), request.prompt))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return stream_completion_response_to_chat_response(self._run_stream(self._chat_request(messages, kwargs)))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request = self._chat_request(messages, kwargs)
        return completion_response_to_chat_response(_response(await self._engine.agenerate(request), request.prompt))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        request = self._chat_request(messages, kwargs)
        return iterate_in_thread(lambda: stream_completion_response_to_chat_response(self._run_stream(request)))


def _check_fields(fields: Mapping[str, Any]) -> None:
    """SpringLLM's own fields, checked as every spring-rag entry point checks them (before pydantic, which would
    read ``k=True`` as 1 and ``"4"`` as 4)."""
    for name, low in (("k", 0), ("max_new_tokens", 1), ("context_window", 0)):
        if fields.get(name) is not None:
            options.integer(name, fields[name], low=low)
    if "weight_temperature" in fields:
        options.number("weight_temperature", fields["weight_temperature"], low=0.0, low_open=True)
    for name, allowed in (("layout", options.LAYOUTS), ("decoding", options.DECODINGS),
                          ("missing_adapter", options.MISSING_ADAPTER)):
        if fields.get(name) is not None:
            options.choice(name, fields[name], allowed)


def chat_template_prompt(tokenizer: Any, messages: Sequence[ChatMessage]) -> str:
    """Messages rendered with the tokenizer's chat template (LlamaIndex's generic transcript without one)."""
    if not has_chat_template(tokenizer):
        return generic_messages_to_prompt(messages)
    turns = [{"role": m.role.value, "content": m.content or ""} for m in messages]
    return render_chat(tokenizer, turns).plain_text()


def user_turn_prompt(tokenizer: Any, completion: str) -> str:
    """A completion prompt as the one user turn of a chat, with the assistant turn opened."""
    return chat_template_prompt(tokenizer, [ChatMessage(role="user", content=completion)])


def _response(generation: Generation, parts: PromptParts | str | None = None,
              delta: str | None = None) -> CompletionResponse:
    """A ``CompletionResponse``: ``raw`` holds ``usage`` (prompt, completion, virtual and total tokens), the
    ``finish_reason`` and the ``prompt_parts`` sent (when known); ``additional_kwargs`` the usage counts."""
    counts = generation.usage.as_dict()
    raw = {"usage": counts, "finish_reason": generation.finish_reason, "prompt_parts": parts}
    return CompletionResponse(text=generation.text, delta=delta, raw=raw, additional_kwargs=counts)

