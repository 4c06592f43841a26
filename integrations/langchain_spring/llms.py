"""``SpringLLM``: a LangChain completion LLM over a local Hugging Face model that reads SPRING virtual tokens.

The prompt goes to the model as written (no chat template). In a RAG chain the block goes between the retrieved
context and the question by itself (``langchain_spring.placement``), so ``SPRING_RAG_PROMPT`` gives the paper's
raw layout (passages, ``[r1]..[rk]``, ``Question: ...\\nAnswer:``) and any other prompt works too. There, the
context and the question the block was placed from are read as characters (``literal_content``: a document that
spells ``<|im_end|>`` is not that token), while the template's own text stays as written; a call without a block
reads the whole prompt as written, as the base model would. ``batch`` runs the prompts as one left-padded batch
(greedy answers equal one-by-one calls).

Example:
    >>> from langchain_spring import SpringLLM, SPRING_RAG_PROMPT, format_docs
    >>> llm = SpringLLM(model="my-llama/", tokens="my-tokens/", max_tokens=8)  # or smollm2-135m(-squad)
    >>> chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | SPRING_RAG_PROMPT | llm
    >>> isinstance(chain.invoke("Who is Harvard named after?"), str)  # ' John Harvard' with SmolLM2's tokens
    True
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables.config import run_in_executor

from langchain_spring._base import SpringParams, finished, usage_metadata
from langchain_spring.tracking import TRACKER
from spring_core import Generation as SpringGeneration
from spring_core.aio import iterate_in_thread
from spring_core.engine import Request
from spring_core.generation import GenerationStream
from spring_core.prompts.placement import literal_content
from spring_core.types import PromptParts


class SpringLLM(SpringParams, LLM):
    """Completion LLM over ``spring_core.SpringModel``: a local Hugging Face LLM plus optional virtual tokens.

    Same fields as ``ChatSpring`` (``model``, ``tokens``, ``k``, ``temperature``, ``max_tokens``, ``stop``,
    ``timeout``, ``max_retries``, ``model_kwargs``, ``spring_model``). Each generation's ``generation_info`` holds
    ``finish_reason`` and ``usage_metadata`` (virtual tokens in ``input_token_details["virtual"]``);
    ``llm_output["token_usage"]`` sums prompt, virtual and completion tokens over the batch. With
    ``invoke(question, documents=docs)`` the prompt is the bare question, answered from the documents read with
    ``decoding`` (as ``ChatSpring`` does).

    Example:
        >>> from langchain_spring import SpringLLM
        >>> llm = SpringLLM(model="my-llama/", max_tokens=4)  # or model="smollm2-135m" (' Paris')
        >>> result = llm.generate(["Question: What is the capital of France?\\nAnswer:"])
        >>> result.generations[0][0].generation_info["finish_reason"], result.llm_output["token_usage"]
        ('length', {'prompt_tokens': 19, 'virtual_tokens': 0, 'completion_tokens': 4, 'total_tokens': 23})
    """

    @property
    def _llm_type(self) -> str:
        return "spring"

    _ls_model_type: ClassVar[str] = "llm"

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return self._generate([prompt], stop, run_manager, **kwargs).generations[0][0].text

    def _request(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any], run_manager: Any) -> Request:
        if kwargs.get("documents") is not None:
            return self._documents_request(prompt, stop, kwargs)
        # LangChain hands _generate the first prompt's run manager only: find each prompt's own run
        run_id = TRACKER.run_for(prompt) or getattr(run_manager, "run_id", None)
        settings, k = self._call_settings(stop, kwargs)
        placement, k = self._placement([prompt], ["user"], run_id, k, kwargs.get("rag_inputs"))
        if placement is None:
            return Request(prompt=PromptParts(prompt), settings=settings)
        # the context and the question it was placed from are content: characters, never special tokens
        texts, placement = literal_content([prompt], placement, self.engine.spring.tokenizer)
        offset = placement.at.offset
        prompt = placement.restate(texts, k)[0]  # a question-first prompt: the question again after the block
        return Request(prompt=PromptParts(prompt[:offset], k, prompt[offset:]), settings=settings)

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        return self._result(self._complete_all([self._request(p, stop, kwargs, run_manager) for p in prompts]))

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        # Loading and generation block: run them in a worker thread so the event loop keeps going.
        requests = await run_in_executor(None, lambda: [self._request(p, stop, kwargs, run_manager) for p in prompts])
        return self._result(await run_in_executor(None, self._complete_all, requests))

    def _start_stream(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any],
                      run_manager: Any = None) -> GenerationStream:
        return self._open_stream(self._request(prompt, stop, kwargs, run_manager))

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        stream = self._start_stream(prompt, stop, kwargs, run_manager)
        for delta in self._deltas(stream):
            chunk = GenerationChunk(text=delta)
            if run_manager is not None:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
        yield self._last_chunk(stream)

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        # Loading and encoding block, so they run in a worker thread; so does the token stream.
        stream = await run_in_executor(None, self._start_stream, prompt, stop, kwargs, run_manager)
        async for delta in iterate_in_thread(lambda: self._deltas(stream)):
            chunk = GenerationChunk(text=delta)
            if run_manager is not None:
                await run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
        yield self._last_chunk(stream)

    # ----- results -------------------------------------------------------------------------------------------

    def _result(self, generations: Sequence[SpringGeneration]) -> LLMResult:
        rows = []
        totals = {"prompt_tokens": 0, "virtual_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for generation in generations:
            info = {"finish_reason": generation.finish_reason, "usage_metadata": usage_metadata(generation.usage)}
            rows.append([Generation(text=generation.text, generation_info=info)])
            totals["prompt_tokens"] += generation.usage.prompt_tokens
            totals["virtual_tokens"] += generation.usage.virtual_tokens
            totals["completion_tokens"] += generation.usage.completion_tokens
            totals["total_tokens"] += generation.usage.total_tokens
        return LLMResult(generations=rows, llm_output={"token_usage": totals, "model_name": self.model})

    def _last_chunk(self, stream: GenerationStream) -> GenerationChunk:
        """The closing chunk: no text, the whole answer's usage and finish reason."""
        generation = finished(stream)
        info = {"finish_reason": generation.finish_reason, "usage_metadata": usage_metadata(generation.usage),
                "model_name": self.model}
        return GenerationChunk(text="", generation_info=info)
