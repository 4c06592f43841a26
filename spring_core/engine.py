"""One call path for every front end: a ``Request`` in, a ``Generation`` (or a stream) out.

Both integrations (LlamaIndex and LangChain) build a ``Request`` and hand it to an ``Engine``, so a feature lands
here once and both ecosystems get it. A request is either a finished prompt (``PromptParts``, its block placed by
the caller; a plain string has no block) or a question with retrieved documents, which the engine reads as
``knowledge`` says (their text, their adapters, or both) and decodes with ``decoding`` (``stuff`` or marginal
decoding over the passages).

Example:
    >>> engine = Engine(SpringModel.from_pretrained("smollm2-135m", tokens="smollm2-135m-squad"))  # doctest: +SKIP
    >>> docs = [ParametricDocument(None, "Harvard is named after John Harvard.", 12.0)]          # doctest: +SKIP
    >>> engine.generate(Request(question="Who is Harvard named after?", documents=docs, k=10,
    ...                         settings={"max_new_tokens": 8})).text                           # doctest: +SKIP
    'John Harvard'
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from spring_core import options
from spring_core.errors import OptionError, ServerError
from spring_core.generation import GenerationStream, stream_generation
from spring_core.parametric.online import ParametricCall, ParametricDocument, activated, plan_call
from spring_core.spring_model import SpringModel
from spring_core.types import Generation, GenerationSettings, PromptParts


@dataclass(frozen=True)
class Request:
    """One call: a finished ``prompt``, or a ``question`` with ``documents``, plus how to read them.

    Every field is checked when the request is made (``spring_core.options``), so a bad value raises an
    ``OptionError`` naming it before anything runs. ``k`` is the block size for a question with documents
    (``None``: all ``n`` tokens, 0 in ``prag`` decoding); a finished prompt carries its own. ``settings`` are
    ``SpringModel.generate``'s (``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``), given as a
    mapping and held as ``GenerationSettings``.
    """

    prompt: PromptParts | str | None = None
    question: str | None = None
    documents: Sequence[ParametricDocument] | None = None
    k: int | None = None
    decoding: str = "stuff"
    knowledge: str = "icl"
    missing_adapter: str = "error"
    weight_temperature: float = 1.0
    settings: Mapping[str, Any] | GenerationSettings = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prompt is not None and self.question is not None:
            raise OptionError("a Request holds a finished prompt or a question (with documents), not both")
        if not isinstance(self.settings, GenerationSettings):
            object.__setattr__(self, "settings", options.generation_settings(self.settings))
        if self.prompt is not None:  # a finished prompt: nothing else of the request applies to it
            object.__setattr__(self, "prompt", options.prompt(self.prompt))
            return
        object.__setattr__(self, "question", options.question(self.question))
        documents = [] if self.documents is None else options.items("documents", self.documents, "documents")
        for i, document in enumerate(documents):
            if not isinstance(document, ParametricDocument):
                raise OptionError(f"documents[{i}] must be a ParametricDocument, got {type(document).__name__}")
        options.passages([d.passage for d in documents])
        object.__setattr__(self, "documents", tuple(documents))
        if self.k is not None:
            options.integer("k", self.k, low=0)
        options.choice("decoding", self.decoding, options.DECODINGS)
        options.choice("knowledge", self.knowledge, options.KNOWLEDGE)
        options.choice("missing_adapter", self.missing_adapter, options.MISSING_ADAPTER)
        options.number("weight_temperature", self.weight_temperature, low=0.0, low_open=True)


class Engine:
    """A ``SpringModel`` and (optionally) document adapters, answering ``Request``\\ s in this process, or on a
    server ``backend`` (``spring_core.serving.VLLMBackend``) that gets the same prompts, built by the same code.

    Adapters are active for one call only (per thread and task), so concurrent requests never see each other's.

    Example:
        >>> engine = Engine(sm, adapters=open_adapters("adapters/", sm.model))                  # doctest: +SKIP
        >>> engine.generate(Request(prompt=sm.prompt_parts("Who?", ["X is Y."], k=5))).text    # doctest: +SKIP
    """

    def __init__(self, spring: SpringModel, adapters: Any = None, backend: Any = None):
        self.spring = spring
        self.adapters = adapters
        self.backend = backend

    def generate(self, request: Request) -> Generation:
        """The answer to one request."""
        if self.backend is not None:
            return self.backend.generate(self.spring, *self._served(request))
        if request.prompt is not None:
            return self.spring.runner.generate([self._prompt(request)], request.settings)[0]
        call = self._plan(request)
        with activated(self.adapters, call.adapter_ids):
            return self.spring.answer(request.question, call.passages, self.spring.check_k(call.k), request.decoding,
                                      request.settings, scores=call.weights if request.decoding != "stuff" else None,
                                      weight_temperature=request.weight_temperature)

    def stream(self, request: Request) -> GenerationStream:
        """The answer as a stream of text deltas (``result`` holds the ``Generation`` once it is read)."""
        if self.backend is not None:
            return self.backend.stream(self.spring, *self._served(request))
        if request.prompt is not None:
            return stream_generation(self.spring.runner, self._prompt(request), request.settings)
        call = self._plan(request)
        # the stream's worker thread starts inside the block, so it keeps this call's adapters
        with activated(self.adapters, call.adapter_ids):
            return self.spring.answer_stream(request.question, call.passages, self.spring.check_k(call.k),
                                             request.decoding, request.settings,
                                             scores=call.weights if request.decoding != "stuff" else None,
                                             weight_temperature=request.weight_temperature)
    async def agenerate(self, request: Request) -> Generation:
        """Async twin of ``generate``: a server backend is awaited, the in-process model runs in a worker thread."""
        if self.backend is not None:
            served = await asyncio.to_thread(self._served, request)
            return await self.backend.agenerate(self.spring, *served)
        return await asyncio.to_thread(self.generate, request)

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        """Answers in order; finished prompts with equal settings run as one left-padded batch in process, and
        as concurrent requests (which the server batches) on a server backend."""
        if self.backend is not None:
            with ThreadPoolExecutor(max_workers=max(1, min(32, len(requests)))) as pool:
                return list(pool.map(self.generate, requests))
        prompts = [self._prompt(r) for r in requests if r.prompt is not None]
        if requests and len(prompts) == len(requests) and all(r.settings == requests[0].settings for r in requests):
            return self.spring.runner.generate(prompts, requests[0].settings)
        return [self.generate(request) for request in requests]

    def _prompt(self, request: Request) -> PromptParts:
        prompt = request.prompt
        assert isinstance(prompt, PromptParts)  # Request made it so
        self.spring.check_k(prompt.k)
        return prompt

    def _served(self, request: Request) -> tuple[PromptParts, GenerationSettings, str | None]:
        """A request as a server backend takes it: the finished prompt, the settings and the merged adapter's name."""
        if request.prompt is not None:
            return self._prompt(request), request.settings, None
        if request.decoding != "stuff":
            raise ServerError(f"decoding {request.decoding!r} cannot be served by {self.backend!r}: marginal "
                              "decoding needs every passage's full next-token distribution at each step, which a "
                              "server's top-n log-probabilities do not give. Use decoding='stuff', or the in-process "
                              "backend")
        call = self._plan(request)
        lora = self.backend.adapter_name(self.spring, self.adapters, call.adapter_ids) if call.adapter_ids else None
        return self.spring.prompt_parts(request.question, call.passages, call.k), request.settings, lora

    def _plan(self, request: Request) -> ParametricCall:
        return plan_call(self.adapters, list(request.documents or []), knowledge=request.knowledge, k=request.k,
                         missing_adapter=request.missing_adapter)


def answer_with_adapters(sm: SpringModel, adapters: Any, question: str, documents: Sequence[ParametricDocument], *,
                         knowledge: str = "combine", k: int | None = None, decoding: str = "stuff",
                         missing_adapter: str = "error", weight_temperature: float = 1.0,
                         **settings: Any) -> Generation:
    """Answer ``question`` with the documents' knowledge as ``knowledge`` (``icl``, ``prag``, ``combine``) says;
    ``decoding`` is ``SpringModel.generate``'s ``decoding`` for the passages in the prompt, ``settings`` its generation
    settings. With a marginal ``decoding`` the passages are weighted by their scores: all scored, or none (equal
    weights); a mix raises ``DecodingError``.
    """
    request = Request(question=question, documents=documents, k=k, decoding=decoding, knowledge=knowledge,
                      missing_adapter=missing_adapter, weight_temperature=weight_temperature, settings=settings)
    return Engine(sm, adapters).generate(request)
