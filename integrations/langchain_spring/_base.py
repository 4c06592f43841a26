"""What ``ChatSpring`` and ``SpringLLM`` share: fields, model loading, settings, block placement, usage, async.

Both classes inherit ``SpringParams`` next to their LangChain base class, so every field, default and helper is
written once; every call becomes a ``spring_core.engine.Request``. Models loaded by name are shared per process
(``spring_core.model.loading.DEFAULT_POOL``); pass ``spring_model=`` to share a model you loaded yourself.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast
from uuid import UUID

from langchain_core.caches import BaseCache
from langchain_core.documents import Document
from langchain_core.language_models import LangSmithParams
from langchain_core.messages.ai import UsageMetadata
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from langchain_spring.placement import find_placement
from langchain_spring.tracking import TRACKER, RunSignals, install_tracker
from spring_core import Generation, SpringModel, Usage, VirtualTokens, options
from spring_core.engine import Engine, Request
from spring_core.errors import OptionError
from spring_core.generation import GenerationStream
from spring_core.model.loading import DEFAULT_MODEL, DEFAULT_POOL
from spring_core.parametric.online import ParametricDocument, check_knowledge, open_adapters
from spring_core.prompts.placement import Placement
from spring_core.serving.thin import is_thin, refuse, thin_spring_model
from spring_core.serving.vllm import as_backend, serves_remotely

LOAD_KWARGS = ("device", "dtype")
"""Keys ``model_kwargs`` accepts; they go to ``SpringModel.from_pretrained`` when the model is loaded by name."""

CALL_KWARGS = ("max_tokens", "temperature", "top_p", "seed", "k", "model", "documents", "decoding", "knowledge",
               "rag_inputs")
"""Per-call keyword arguments (``invoke(..., max_tokens=8)``, ``bind(k=0)``); ``stop`` is LangChain's own.
``documents`` (retrieved ``Document`` objects) makes the input the bare question, answered from those passages
read with ``decoding``. ``rag_inputs`` (``{"context": text, "question": text}``) says which text of the messages
is the retrieved context and which the question (``SpringRAGMiddleware`` passes it)."""

_LOCK = threading.RLock()
logger = logging.getLogger(__name__)


def merge_stops(*stops: str | Sequence[str] | None) -> list[str]:
    """Stop strings from the constructor and the call, in order, without duplicates or empty strings; a group given
    as one string is one stop string (``stop="Question:"``, as ``ChatOpenAI`` takes it), not its characters."""
    merged: dict[str, None] = {}
    for group in stops:
        group = [group] if isinstance(group, str) else group or []
        if not isinstance(group, (list, tuple)) or not all(isinstance(stop, str) for stop in group):
            group = options.stop_strings(group)  # the one check of stop strings: it names what is wrong
        merged.update(dict.fromkeys(stop for stop in group if stop))
    return list(merged)


def usage_metadata(usage: Usage) -> UsageMetadata:
    """LangChain usage from spring-rag usage: virtual tokens count as input and are also listed on their own.

    ``input_tokens`` = real prompt tokens + virtual tokens, ``output_tokens`` = generated tokens, and
    ``input_token_details["virtual"]`` = the virtual tokens (UsageMetadata allows provider-specific detail keys).
    """
    details = cast(Any, {"virtual": usage.virtual_tokens})
    return UsageMetadata(
        input_tokens=usage.prompt_tokens + usage.virtual_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        input_token_details=details,
    )


def document_passage(document: Document) -> dict[str, str]:
    """A ``Document`` as a SPRING passage: its ``title`` metadata and its text."""
    return {"title": str(document.metadata.get("title") or ""), "text": document.page_content}


def document_score(document: Document) -> float | None:
    """The retriever's score of a ``Document`` (higher is better): ``metadata["score"]`` as ``SpringRetriever``
    writes it, else ``metadata["relevance_score"]`` as LangChain's rerankers do; ``None`` without either."""
    value = document.metadata.get("score", document.metadata.get("relevance_score"))
    return None if value is None else float(value)


def tokens_fingerprint(tokens: str | Path | VirtualTokens | None) -> str | None:
    """A short, stable name for a token source (used in cache keys and traces)."""
    if tokens is None:
        return None
    if isinstance(tokens, VirtualTokens):
        digest = hashlib.sha256(tokens.weight.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
        return f"virtual-tokens:n={tokens.n}:{digest}"
    return str(tokens)


class SpringParams(BaseModel):
    """Fields and helpers shared by ``ChatSpring`` and ``SpringLLM`` (not meant to be used on its own)."""

    model: str = DEFAULT_MODEL
    """Base model: an alias (``smollm2-135m``), a local folder, a ``.gguf`` file or a Hugging Face id."""
    tokens: str | Path | VirtualTokens | None = None
    """Virtual tokens: an artifact folder, a ``VirtualTokens`` table, or ``None`` for the plain base model."""
    spring_model: SpringModel | None = Field(default=None, exclude=True)
    """A ``SpringModel`` you already loaded, shared as it is (``tokens``, if also given, replace its own through
    ``with_tokens``, which copies nothing). ``model_kwargs`` do not apply to it."""
    layout: str | None = None
    """The prompt layout of SPRING's own prompts (``documents=`` calls): ``raw`` or ``chat``; default: the one the
    tokens were trained with."""
    k: int | None = Field(default=None, ge=0)
    """Virtual tokens per RAG call (``None``: all ``n``; ``0``: none, the plain base model). The model places them
    between the context and the question itself (see ``langchain_spring.placement``)."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature; ``0`` is greedy decoding."""
    max_tokens: int = Field(default=256, ge=1)
    """Most new tokens per answer."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling (with ``temperature > 0``)."""
    seed: int | None = None
    """Seed for reproducible sampling (the global RNG is left alone)."""
    stop: list[str] | None = None
    """Stop strings (a single string is one stop string); merged with the ones given per call. The answer is cut
    before the first one."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds one call may take, checked between generated tokens: past it, generation is stopped and
    ``TimeoutError`` raised. With a timeout, ``invoke``/``batch`` answer through the token stream (same result).
    With a server ``backend`` it is also the server call's whole deadline (connecting, retries and streaming
    included; ``spring_core.errors.DeadlineError``, a ``TimeoutError``)."""
    max_retries: int = Field(default=0, ge=0)
    """Retries of a server ``backend`` that is starting or overloaded (in process nothing is retried)."""
    backend: Any = None
    r"""Where generation runs: ``None`` (this process, transformers), a vLLM server URL such as
    ``"http://127.0.0.1:8000"`` (``spring-rag serve`` starts one), or a ``spring_core.serving.VLLMBackend``. The
    prompts, the block placement and the adapters are the same; marginal ``decoding``\ s run in process only."""
    api_key: SecretStr | None = None
    """The key of a server ``backend`` given as a URL (its ``--api-key``); default: the ``VLLM_API_KEY``
    environment variable, as vLLM's own server reads it. A ``VLLMBackend`` object carries its own key."""
    decoding: str = "stuff"
    """How a call with ``documents=`` reads them: ``stuff`` (one prompt) or marginal decoding over the documents
    one by one (``rag-token``, ``rag-sequence``, ``rag-sequence-fast``). Prompts that arrive rendered (the
    documents already joined into one context) always run as ``stuff``."""
    weight_temperature: float = Field(default=1.0, gt=0)
    """Passage weights for the marginal modes: ``softmax(score / weight_temperature)`` over the documents'
    ``metadata["score"]`` (equal weights when they have none)."""
    adapters: Any = None
    """Parametric RAG: a folder from ``spring-rag parametrize`` (PRAG adapter store or Poly-PRAG experts), or
    adapters already loaded (``spring_core.parametric.open_adapters``)."""
    knowledge: str = "icl"
    """How a call with ``documents=`` uses them: ``icl`` (their text in the prompt), ``prag`` (their adapters
    only), ``combine`` (both; with tokens loaded, combine + SPRING). Adapters are active for that call only."""
    missing_adapter: str = "error"
    """A document without an adapter in ``prag``/``combine``: ``error``, or ``icl`` (its text goes into the prompt
    instead, and a warning is logged)."""
    adapter_key: str = "adapter_id"
    """The document metadata that names its adapter (``ParametricAdapterCompressor`` writes it)."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Loading options for ``SpringModel.from_pretrained``: ``device``, ``dtype``."""
    cache: BaseCache | bool | None = Field(default=False, exclude=True)
    """LangChain's LLM cache, off unless you ask for it: ``True`` (the global cache, ``set_llm_cache``), ``None``
    (the global cache if one is set, LangChain's default elsewhere) or a ``BaseCache``. It is off by default
    because LangChain keys an entry by the messages (or the prompt) and the settings only, while what the model
    reads also depends on the run: a RAG chain's block is placed from the retrievals and template variables the
    run recorded (``langchain_spring.tracking``), which the key does not hold, and LangChain offers no hook to add
    them (a completion LLM's cache is even read before its run starts). With a cache on, a plain call and a RAG
    call whose messages are the same share one entry, the block's answer and the plain model's are served for
    each other; turn it on only where the same messages always come from the same kind of call."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())
    _ls_model_type: ClassVar[str] = "chat"
    """LangSmith's model type: ``chat`` or ``llm``."""

    _spring: SpringModel | None = PrivateAttr(default=None)
    _adapters: Any = PrivateAttr(default=None)
    _engine: Engine | None = PrivateAttr(default=None)
    _warned: set[str] = PrivateAttr(default_factory=set)
    _fingerprint: tuple[Any, str | None] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _warn_unknown_arguments(cls, values: Any) -> Any:
        if isinstance(values, dict):
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            unknown = sorted(str(key) for key in values if key not in known)
            if unknown:
                warnings.warn(
                    f"{cls.__name__} ignores the argument(s) {', '.join(unknown)} (a model in this process needs no "
                    "client settings; api_key= is for a server backend); its options are "
                    f"{', '.join(sorted(SpringParams.model_fields))}",
                    UserWarning,
                    stacklevel=4,
                )
        return values

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_model_source(self) -> SpringParams:
        install_tracker()
        unknown = sorted(set(self.model_kwargs) - set(LOAD_KWARGS))
        if unknown:
            raise ValueError(f"model_kwargs accepts {', '.join(LOAD_KWARGS)}; got {', '.join(unknown)}")
        options.choice("decoding", self.decoding, options.DECODINGS)
        check_knowledge(self.knowledge, self.adapters)
        options.choice("missing_adapter", self.missing_adapter, options.MISSING_ADAPTER)
        if self.spring_model is not None:
            if self.model_kwargs:
                raise ValueError(
                    "model_kwargs are loading options, but spring_model= is already loaded: pass them to "
                    "SpringModel.from_pretrained instead"
                )
            if "model" not in self.model_fields_set:
                self.model = self.spring_model.name
        return self

    # ----- the model -----------------------------------------------------------------------------------------

    @property
    def spring(self) -> SpringModel:
        """The ``SpringModel`` in use: ``spring_model`` (with ``tokens``, if given), else the model loaded by name on
        first use (base weights shared per process); with a server ``backend``, a thin client of the model named
        (its tokenizer and input-embedding rows, no layers: ``spring_core.serving.thin``)."""
        if self.spring_model is not None and self.tokens is None and self.layout is None:
            return self.spring_model
        if self._spring is None:
            with _LOCK:
                if self._spring is None:
                    self._spring = self._load()
        return self._spring

    def _load(self) -> SpringModel:
        if self.spring_model is not None:
            return self.spring_model.with_tokens(self.tokens or self.spring_model.tokens, layout=self.layout)
        if serves_remotely(self.backend):  # the server runs the layers: a thin client (tokenizer + embedding rows)
            return thin_spring_model(self.model, self.tokens, layout=self.layout)
        model, tokenizer = DEFAULT_POOL.get(self.model, self.model_kwargs.get("device"), self.model_kwargs.get("dtype"))
        return SpringModel(model, tokenizer, self.tokens, layout=self.layout)

    @property
    def parametric_adapters(self) -> Any:
        """The document adapters in use (opened from ``adapters`` on first use, for the loaded model)."""
        if self.adapters is None or not isinstance(self.adapters, (str, Path)):
            return self.adapters
        if self._adapters is None:
            with _LOCK:
                if self._adapters is None:
                    if is_thin(self.spring.model):
                        refuse(f"adapters={str(self.adapters)!r}")
                    self._adapters = open_adapters(self.adapters, self.spring.model, model_name=self.model)
        return self._adapters

    @property
    def engine(self) -> Engine:
        """The core call path over ``spring`` and ``parametric_adapters``, on ``backend`` (built on first use)."""
        if self._engine is None:
            with _LOCK:
                if self._engine is None:
                    key = None if self.api_key is None else self.api_key.get_secret_value()
                    backend = as_backend(self.backend, api_key=key, deadline=self.timeout,
                                         max_retries=self.max_retries)
                    self._engine = Engine(self.spring, self.parametric_adapters, backend)
        return self._engine

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's own tokenizer (LangChain's default would fetch GPT-2's)."""
        custom = getattr(self, "custom_get_token_ids", None)
        if custom is not None:
            return custom(text)
        return list(self.spring.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ----- requests ------------------------------------------------------------------------------------------

    def _call_settings(self, stop: Sequence[str] | None,
                       kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], int | None]:
        unknown = sorted(set(kwargs) - set(CALL_KWARGS))
        if unknown:
            raise OptionError(
                f"{type(self).__name__} got unknown call argument(s) {', '.join(unknown)}; "
                f"it takes stop and {', '.join(CALL_KWARGS)}"
            )
        requested = kwargs.get("model")
        if requested is not None and requested != self.model:
            raise OptionError(
                f"{type(self).__name__} runs the local model {self.model!r} and cannot switch to {requested!r} per "
                f"call; build another {type(self).__name__}(model={requested!r}) instead"
            )
        settings = {
            "max_new_tokens": kwargs.get("max_tokens", self.max_tokens),
            "temperature": kwargs.get("temperature", self.temperature),
            "top_p": kwargs.get("top_p", self.top_p),
            "seed": kwargs.get("seed", self.seed),
            "stop": merge_stops(self.stop, stop),
        }
        return settings, kwargs.get("k", self.k)

    def _documents_request(self, question: str, stop: Sequence[str] | None, kwargs: Mapping[str, Any]) -> Request:
        """A call with ``documents=``: the bare question, answered from the documents with ``decoding``."""
        settings, k = self._call_settings(stop, kwargs)
        documents = []
        for i, document in enumerate(options.items("documents", kwargs["documents"], "LangChain Documents")):
            if not isinstance(document, Document):
                raise OptionError(f"documents[{i}] must be a langchain_core Document, got {type(document).__name__}")
            documents.append(ParametricDocument(document.metadata.get(self.adapter_key), document_passage(document),
                                                document_score(document)))
        return Request(question=question, documents=documents, k=k, decoding=kwargs.get("decoding", self.decoding),
                       knowledge=kwargs.get("knowledge", self.knowledge),
                       missing_adapter=self.missing_adapter, weight_temperature=self.weight_temperature,
                       settings=settings)

    def _placement(self, texts: Sequence[str], roles: Sequence[str], run_id: UUID | None, k: int | None,
                   rag_inputs: Any = None) -> tuple[Placement | None, int]:
        """Where the block goes in these messages and how many tokens it holds (``None``/0: not a RAG call);
        ``k`` is the call's (``None``: all ``n``); ``rag_inputs`` (``{"context": ..., "question": ...}``, from
        ``SpringRAGMiddleware`` or the caller) say where the context and the question are, else the run's
        signals do (``langchain_spring.placement``). A question-first prompt's placement carries the question to
        ask again right after the block (``Placement.restated``; ``Placement.restate`` writes it into the texts)."""
        signals = None
        if rag_inputs is not None:
            if not isinstance(rag_inputs, Mapping) or not all(isinstance(v, str) for v in rag_inputs.values()):
                raise OptionError("rag_inputs must be a mapping of template variables to their text, e.g. "
                                  f"{{'context': ..., 'question': ...}}; got {rag_inputs!r:.80}")
            signals = RunSignals(template_inputs=(dict(rag_inputs),))
        n = self.engine.spring.n
        k = n if k is None else k
        placement, signal = find_placement(texts, roles, signals or TRACKER.signals(run_id)) if k != 0 else (None, "")
        if placement is None:  # no block: the engine never sees k, so it is checked here (else the engine does)
            options.virtual_token_count(k, n)
            return None, 0
        if signal == "label":
            self._warn_once("label", "no retriever ran in this chain and no prompt template named its context, so "
                            "the context was found by its label in the system message; retrieve through a "
                            "LangChain retriever, fill a prompt template with the context, or use "
                            "SpringRAGMiddleware (LangChain 1.x agents) for exact placement")
        if placement.question_first and "question_first" not in self._warned:  # common (rlm/rag-prompt, refine)
            self._warned.add("question_first")  # and it still works, so it is logged, not warned
            logger.info("this RAG prompt states the question before the context, an order SPRING's tokens were not "
                        "trained on; the block goes right after the context and the question is asked again after "
                        "it (context, block, question, as SPRING reads them)")
        return placement, k

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=5)

    # ----- generation ----------------------------------------------------------------------------------------

    def _complete_all(self, requests: Sequence[Request]) -> list[Generation]:
        """Answers for requests that share settings: one left-padded batch, or token streams under a timeout."""
        if self.timeout is not None:
            return [self._complete_streamed(request) for request in requests]
        return self.engine.generate_batch(requests)

    def _complete_streamed(self, request: Request) -> Generation:
        stream = self._open_stream(request)
        for _ in self._deltas(stream):
            pass
        return finished(stream)

    def _open_stream(self, request: Request) -> GenerationStream:
        """Start generating (blocking: encodes the prompt); iterate ``_deltas(stream)`` for the text."""
        return self.engine.stream(request)

    def _deltas(self, stream: GenerationStream) -> Iterator[str]:
        """The stream's text deltas, stopped with ``TimeoutError`` once ``timeout`` seconds have passed."""
        if self.timeout is None:
            return stream
        return _until_deadline(stream, self.timeout)

    # ----- LangChain plumbing --------------------------------------------------------------------------------

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        requested = kwargs.get("model")
        params = LangSmithParams(
            ls_provider="spring",
            ls_model_name=requested if isinstance(requested, str) else self.model,
            ls_model_type=cast(Any, self._ls_model_type),
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        stops = merge_stops(self.stop, stop)
        if stops:
            params["ls_stop"] = stops
        return params

    @property
    def _identifying_params(self) -> dict[str, Any]:
        tokens = self.tokens if self.tokens is not None or self.spring_model is None else self.spring_model.tokens
        if self._fingerprint is None or self._fingerprint[0] is not tokens:  # hashing a table once, not per call
            self._fingerprint = (tokens, tokens_fingerprint(tokens))
        return {
            "model": self.model,
            "tokens": self._fingerprint[1],
            "k": self.k,
            "layout": self.layout,
            "decoding": self.decoding,
            "knowledge": self.knowledge,
            # a folder names its adapters; loaded ones only match themselves (no false cache hits)
            "adapters": self.adapters if self.adapters is None or isinstance(self.adapters, (str, Path))
            else f"{type(self.adapters).__name__}@{id(self.adapters):x}",
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
            **self.model_kwargs,
        }


def finished(stream: GenerationStream) -> Generation:
    """The ``Generation`` (text, exact usage, finish reason) of a stream that has been read to its end."""
    if stream.result is None:
        raise RuntimeError("the stream ended without a result; read it to its end before asking for usage")
    return stream.result


def _until_deadline(stream: Iterator[str], timeout: float) -> Iterator[str]:
    deadline = time.monotonic() + timeout
    try:
        for delta in stream:
            if time.monotonic() > deadline:
                raise TimeoutError(f"generation took longer than timeout={timeout} s and was stopped")
            yield delta
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # cancels generation in SpringModel's worker thread


