"""``Engine``: a ``Request`` in, a ``Generation`` (or a stream) out, on one backend.

Both integrations build a ``Request`` and hand it to an ``Engine``, so a feature lands here once. The engine reads
a question's documents as ``knowledge`` says (their text, their adapters, or both; ``plan_call``), builds the
prompt in the model's layout, checks the block size against the loaded tokens, and hands a finished prompt to its
backend (in process by default, or a vLLM server: ``spring_core.serving.VLLMBackend``), or, for the marginal
decodings, runs them in process.

Example:
    >>> engine = Engine(SpringModel.from_pretrained("smollm2-135m", tokens="smollm2-135m-squad"))  # doctest: +SKIP
    >>> docs = [ParametricDocument(None, "Harvard is named after John Harvard.", 12.0)]          # doctest: +SKIP
    >>> engine.generate(Request(question="Who is Harvard named after?", documents=docs, k=10,
    ...                         settings={"max_new_tokens": 8})).text                           # doctest: +SKIP
    ' John Harvard'
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from spring_core import options
from spring_core.engine.backends import Backend, TransformersBackend
from spring_core.engine.request import Request
from spring_core.errors import ServerError
from spring_core.generation import GenerationStream
from spring_core.model.spring_model import SpringModel
from spring_core.parametric.online import ParametricCall, ParametricDocument, plan_call
from spring_core.types import Generation, GenerationSettings, PromptParts


class Engine:
    """A ``SpringModel`` and (optionally) document adapters, answering ``Request``\\ s on ``backend`` (default: in
    this process, ``TransformersBackend``), which gets the same prompts, built by the same code, either way.

    Adapters are active for one call only (per thread and task), so concurrent requests never see each other's.

    Example:
        >>> from spring_core.parametric import open_adapters
        >>> engine = Engine(sm, adapters=open_adapters("adapters/", sm.model))
        >>> out = engine.generate(Request(prompt=sm.prompt_parts("Who?", ["X is Y."], k=5),
        ...                               settings={"max_new_tokens": 4}))
        >>> out.usage.virtual_tokens
        5
        >>> docs = [ParametricDocument("doc-1", "X is Y.", 2.0)]
        >>> engine.generate(Request(question="Who?", documents=docs, knowledge="prag",
        ...                         settings={"max_new_tokens": 4})).usage.virtual_tokens   # doc-1's adapter, no block
        0
    """

    def __init__(self, spring: SpringModel, adapters: Any = None, backend: Backend | None = None):
        self.spring = spring
        self.adapters = adapters
        self.backend: Backend = TransformersBackend() if backend is None else backend

    def generate(self, request: Request) -> Generation:
        """The answer to one request."""
        if request.prompt is None and request.decoding != "stuff":
            return self._marginal(request)
        return self.backend.generate(self.spring, *self._prompt_and_adapters(request))

    def stream(self, request: Request) -> GenerationStream:
        """The answer as a stream of text deltas (``result`` holds the ``Generation`` once it is read); the
        marginal decodings settle the answer only at the end, so they stream it as one delta."""
        if request.prompt is None and request.decoding != "stuff":
            return GenerationStream.of(self._marginal(request))
        return self.backend.stream(self.spring, *self._prompt_and_adapters(request))

    async def agenerate(self, request: Request) -> Generation:
        """Async twin of ``generate``: a server backend is awaited, the in-process model runs in a worker thread."""
        if request.prompt is None and request.decoding != "stuff":
            return await asyncio.to_thread(self._marginal, request)
        prepared = await asyncio.to_thread(self._prompt_and_adapters, request)  # tokenizing stays off the loop
        return await self.backend.agenerate(self.spring, *prepared)

    def generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        """Answers in order: finished prompts with equal settings go to the backend as one batch (one left-padded
        ``generate`` in process, concurrent requests on a server), anything else one by one."""
        if requests and all(r.prompt is not None and r.settings == requests[0].settings for r in requests):
            for request in requests:
                options.virtual_token_count(request.prompt.k, self.spring.n)
            return self.backend.generate_batch(self.spring, [r.prompt for r in requests], requests[0].settings)
        if isinstance(self.backend, TransformersBackend):
            return [self.generate(request) for request in requests]
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(requests)))) as pool:  # the server batches them
            return list(pool.map(self.generate, requests))

    def _prompt_and_adapters(self, request: Request) -> tuple[PromptParts, GenerationSettings, Any, list[str]]:
        """What a backend takes for a request: the finished prompt, the settings, the adapters and the ids of the
        documents whose adapters are active for this call."""
        if request.prompt is not None:  # a finished prompt (Request checked it): only its block size is left
            options.virtual_token_count(request.prompt.k, self.spring.n)
            return request.prompt, request.settings, None, []
        call = self._plan(request)
        prompt = self.spring.prompt_parts(request.question, call.passages, call.k)
        return prompt, request.settings, self.adapters, call.adapter_ids

    def _marginal(self, request: Request) -> Generation:
        if not isinstance(self.backend, TransformersBackend):
            raise ServerError(f"decoding {request.decoding!r} cannot be served by {self.backend!r}: marginal "
                              "decoding needs every passage's full next-token distribution at each step, which a "
                              "server's top-n log-probabilities do not give. Use decoding='stuff', or the in-process "
                              "backend")
        call = self._plan(request)
        return self.backend.marginal(self.spring, str(request.question), call.passages, self.spring.check_k(call.k),
                                     request.decoding, request.settings, call.weights, request.weight_temperature,
                                     self.adapters, call.adapter_ids)

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
