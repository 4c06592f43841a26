"""``SpringLLM``: a LangChain completion LLM over a local Hugging Face model that reads SPRING virtual tokens.

The prompt goes to the model as written (no chat template), so ``SPRING_RAG_PROMPT`` gives the paper's raw
layout: passages, ``[r1]..[rk]``, ``Question: ...\\nAnswer:``. ``batch`` runs the prompts as one left-padded
batch (greedy answers equal one-by-one calls).

Example:
    >>> from langchain_spring import SpringLLM, SPRING_RAG_PROMPT
    >>> llm = SpringLLM(model="smollm2-135m", tokens="my-tokens/", max_tokens=32)       # doctest: +SKIP
    >>> (SPRING_RAG_PROMPT | llm).invoke({"context": "[1] Harvard is named after John Harvard.",
    ...                                   "question": "Who is Harvard named after?"})   # doctest: +SKIP
    ' John Harvard'
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables.config import run_in_executor

from langchain_spring._base import SpringParams, finished, usage_metadata
from spring_core import Generation as SpringGeneration
from spring_core.aio import iterate_in_thread
from spring_core.spring_model import GenerationStream


class SpringLLM(SpringParams, LLM):
    """Completion LLM over ``spring_core.SpringModel``: a local Hugging Face LLM plus optional virtual tokens.

    Same fields as ``ChatSpring`` (``model``, ``tokens``, ``k``, ``temperature``, ``max_tokens``, ``stop``,
    ``timeout``, ``max_retries``, ``model_kwargs``, ``spring_model``). Each generation's ``generation_info`` holds
    ``finish_reason`` and ``usage_metadata`` (virtual tokens in ``input_token_details["virtual"]``);
    ``llm_output["token_usage"]`` sums prompt, virtual and completion tokens over the batch. With
    ``invoke(question, documents=docs)`` the prompt is the bare question, answered from the documents read with
    ``mode`` (as ``ChatSpring`` does).

    Example:
        >>> from langchain_spring import SpringLLM
        >>> llm = SpringLLM(model="smollm2-135m", max_tokens=16)                          # doctest: +SKIP
        >>> llm.invoke("Question: What is the capital of France?\\nAnswer:")               # doctest: +SKIP
        ' Paris'
    """

    @property
    def _llm_type(self) -> str:
        return "spring"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._spring_ls_params("llm", stop, kwargs)

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return self._generate([prompt], stop, run_manager, **kwargs).generations[0][0].text

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        return self._result(self._complete_all([self._request(prompt, stop, kwargs) for prompt in prompts]))

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        # Loading and generation block: run them in a worker thread so the event loop keeps going.
        return await run_in_executor(None, self._generate, prompts, stop, None, **kwargs)

    def _start_stream(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> GenerationStream:
        return self._open_stream(self._request(prompt, stop, kwargs))

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        stream = self._start_stream(prompt, stop, kwargs)
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
        stream = await run_in_executor(None, self._start_stream, prompt, stop, kwargs)
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
