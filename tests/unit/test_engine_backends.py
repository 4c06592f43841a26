"""The in-process backend keeps the Backend protocol: every entry answers a prompt exactly as the runner does."""

from __future__ import annotations

import asyncio

from spring_core import PromptParts, SpringModel, VirtualTokens
from spring_core.engine import Engine, Request, TransformersBackend
from spring_core.options import generation_settings

PROMPTS = [PromptParts("[1] Hamlet is a play by William Shakespeare.\n\n", 3, "Question: Who wrote Hamlet?\nAnswer:"),
           PromptParts("Question: Where is Paris?\nAnswer:")]


def test_every_entry_of_the_transformers_backend_gives_the_runners_answer(tiny):
    sm = SpringModel(*tiny, VirtualTokens.random(tiny[0], n=4, seed=5))
    settings = generation_settings({"max_new_tokens": 6})
    backend = TransformersBackend()
    expected = [sm.generate_from_prompt(p, max_new_tokens=6) for p in PROMPTS]
    assert [backend.generate(sm, p, settings) for p in PROMPTS] == expected
    assert backend.generate_batch(sm, PROMPTS, settings) == expected
    assert TransformersBackend(batch_size=1).generate_batch(sm, PROMPTS, settings) == expected  # in chunks
    stream = backend.stream(sm, PROMPTS[0], settings)
    assert "".join(stream) == expected[0].text and stream.result == expected[0]
    assert asyncio.run(backend.agenerate(sm, PROMPTS[0], settings)) == expected[0]

    async def streamed() -> str:
        return "".join([delta async for delta in backend.astream(sm, PROMPTS[0], settings)])

    assert asyncio.run(streamed()) == expected[0].text
    engine = Engine(sm)  # the default backend
    assert isinstance(engine.backend, TransformersBackend)
    requests = [Request(prompt=p, settings=settings) for p in PROMPTS]
    assert engine.generate_batch(requests) == expected
