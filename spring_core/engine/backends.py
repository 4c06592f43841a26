"""Where generation runs: one protocol, and the in-process backend (this process's transformers model).

A backend answers a finished prompt (``PromptParts``) with validated ``GenerationSettings``, optionally with some
documents' adapters active for that call only. ``TransformersBackend`` runs the ``SpringModel``'s own runner and
activates the adapters' hooks in the calling context; ``spring_core.serving.VLLMBackend`` sends the same prompt to
a vLLM server and the documents' summed adapter as a served LoRA. Only the in-process backend can run the
marginal decodings (``marginal``): they need every passage's full next-token distribution at each step.

Example:
    >>> from spring_core.options import generation_settings
    >>> backend = TransformersBackend()
    >>> settings = generation_settings({"max_new_tokens": 4})
    >>> out = backend.generate(sm, sm.prompt_parts("Who?", ["X is Y."], k=5), settings)
    >>> out.usage.virtual_tokens, out.usage.completion_tokens <= 4
    (5, True)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from spring_core.aio import iterate_in_thread
from spring_core.generation import GenerationStream, stream_generation
from spring_core.model.spring_model import SpringModel
from spring_core.parametric.online import activated
from spring_core.types import Generation, GenerationSettings, Passage, PromptParts


class Backend(Protocol):
    """What the engine needs of a backend: a finished prompt in, a ``Generation`` (or its stream) out."""

    def generate(self, spring: SpringModel, prompt: PromptParts, settings: GenerationSettings, adapters: Any = None,
                 adapter_ids: Sequence[str] = ()) -> Generation: ...

    def stream(self, spring: SpringModel, prompt: PromptParts, settings: GenerationSettings, adapters: Any = None,
               adapter_ids: Sequence[str] = ()) -> GenerationStream: ...

    async def agenerate(self, spring: SpringModel, prompt: PromptParts, settings: GenerationSettings,
                        adapters: Any = None, adapter_ids: Sequence[str] = ()) -> Generation: ...

    def astream(self, spring: SpringModel, prompt: PromptParts, settings: GenerationSettings, adapters: Any = None,
                adapter_ids: Sequence[str] = ()) -> AsyncIterator[str]: ...

    def generate_batch(self, spring: SpringModel, prompts: Sequence[PromptParts],
                       settings: GenerationSettings) -> list[Generation]: ...


class TransformersBackend:
    """Generation in this process, on the ``SpringModel``'s transformers model; document adapters are active for
    the one call (per thread and task), so concurrent calls never see each other's. ``batch_size`` prompts at most
    share one left-padded ``generate`` call."""

    def __init__(self, batch_size: int = 8):
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"TransformersBackend(batch_size={self.batch_size})"

    def generate(self, spring: SpringModel, prompt: PromptParts, settings: GenerationSettings, adapters: Any = None,
                 adapter_ids: Sequence[str] = ()) -> Generation:
        with activated(adapters, adapter_ids):
            return spring.runner.generate([prompt], settings)[0]

    def stream(self, spring: SpringModel, prompt: PromptParts, settings: GenerationSettings, adapters: Any = None,
               adapter_ids: Sequence[str] = ()) -> GenerationStream:
        # the stream's worker thread starts inside the block, so it keeps this call's adapters
        with activated(adapters, adapter_ids):
            return stream_generation(spring.runner, prompt, settings)

    async def agenerate(self, spring: SpringModel, prompt: PromptParts, settings: GenerationSettings,
                        adapters: Any = None, adapter_ids: Sequence[str] = ()) -> Generation:
        return await asyncio.to_thread(self.generate, spring, prompt, settings, adapters, adapter_ids)

    def astream(self, spring: SpringModel, prompt: PromptParts, settings: GenerationSettings, adapters: Any = None,
                adapter_ids: Sequence[str] = ()) -> AsyncIterator[str]:
        return iterate_in_thread(lambda: self.stream(spring, prompt, settings, adapters, adapter_ids))

    def generate_batch(self, spring: SpringModel, prompts: Sequence[PromptParts],
                       settings: GenerationSettings) -> list[Generation]:
        """Left-padded batches of ``batch_size``; greedy results equal one-by-one calls."""
        return [generation for start in range(0, len(prompts), self.batch_size)
                for generation in spring.runner.generate(prompts[start:start + self.batch_size], settings)]

    def marginal(self, spring: SpringModel, question: str, passages: Sequence[Passage], k: int, decoding: str,
                 settings: GenerationSettings, scores: Sequence[float] | None, weight_temperature: float,
                 adapters: Any = None, adapter_ids: Sequence[str] = ()) -> Generation:
        """RAG-Token / RAG-Sequence over the passages (``spring_core.generation.marginal``)."""
        with activated(adapters, adapter_ids):
            return spring.answer(question, passages, k, decoding, settings, scores=scores,
                                 weight_temperature=weight_temperature)
