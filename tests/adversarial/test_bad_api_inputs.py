"""Issue #32's list of bad values, table-driven, through every public door: the core API, LangChain and
LlamaIndex. Each must raise a ``SpringError`` whose message names the argument; none may be accepted silently
or surface as a raw library exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.llms.spring import SpringLLM

from langchain_spring import ChatSpring
from spring_core import ContextWindowError, PromptParts, SpringError, SpringModel, VirtualTokens

Q = "Who is Harvard named after?"
P = ["Harvard is named after John Harvard."]


@dataclass(frozen=True)
class Case:
    name: str
    call: Callable[[Any], Any]  # takes the ``doors`` namespace
    argument: str  # what the message must name


@pytest.fixture(scope="module")
def doors(tiny):
    sm = SpringModel(*tiny, VirtualTokens.random(tiny[0], n=8, seed=1))

    class Doors:
        spring = sm
        chat = ChatSpring(spring_model=sm, max_tokens=3)
        llama = SpringLLM(spring_model=sm, max_new_tokens=3)

    return Doors


CASES = [
    # accepted silently before
    Case("passages-string", lambda d: d.spring.generate(Q, "a string"), "passages"),
    Case("passages-dict", lambda d: d.spring.generate(Q, {"text": "x"}), "passages"),
    Case("passage-text-none", lambda d: d.spring.generate(Q, [{"text": None}]), "passages[0]"),
    Case("question-none", lambda d: d.spring.generate(None, P), "question"),
    Case("question-bytes", lambda d: d.spring.generate(b"Who?", P), "question"),
    Case("question-empty", lambda d: d.spring.generate("  ", P), "question"),
    Case("k-bool", lambda d: d.spring.generate(Q, P, k=True), "k"),
    Case("max-new-tokens-float", lambda d: d.spring.generate(Q, P, max_new_tokens=2.5), "max_new_tokens"),
    Case("max-new-tokens-bool", lambda d: d.spring.generate(Q, P, max_new_tokens=True), "max_new_tokens"),
    Case("temperature-nan", lambda d: d.spring.generate(Q, P, temperature=float("nan")), "temperature"),
    Case("temperature-inf", lambda d: d.spring.generate(Q, P, temperature=float("inf")), "temperature"),
    Case("temperature-huge-int", lambda d: d.spring.generate(Q, P, temperature=10**400), "temperature"),
    Case("scores-string", lambda d: d.spring.generate(Q, P, decoding="rag-token", scores="1"), "scores"),
    Case("weight-temperature-bool", lambda d: d.spring.generate(Q, P, decoding="rag-token", weight_temperature=True),
         "temperature"),
    Case("stop-none-item", lambda d: d.spring.generate(Q, P, stop=[None]), "stop[0]"),
    Case("seed-float", lambda d: d.spring.generate(Q, P, seed=1.5), "seed"),
    Case("batch-size-negative", lambda d: d.spring.generate_batch([Q], batch_size=-1), "batch_size"),
    # raw library exceptions before
    Case("prompt-empty", lambda d: d.spring.generate_from_prompt(""), "prompt"),
    Case("question-lone-surrogate", lambda d: d.spring.generate("Who\ud800?", P), "question"),
    Case("passage-lone-surrogate", lambda d: d.spring.generate(Q, ["x\udfff"]), "passages[0]"),
    Case("seed-too-large", lambda d: d.spring.generate(Q, P, seed=2**70), "seed"),
    Case("seed-string", lambda d: d.spring.generate(Q, P, seed="abc"), "seed"),
    Case("stop-int", lambda d: d.spring.generate(Q, P, stop=5), "stop"),
    Case("max-new-tokens-string", lambda d: d.spring.generate(Q, P, max_new_tokens="3"), "max_new_tokens"),
    Case("prompt-none", lambda d: d.spring.generate_from_prompt(None), "prompt"),
    Case("batch-bad-item", lambda d: d.spring.generate_batch([{"q": Q}]), "items[0]"),
    Case("batch-size-zero", lambda d: d.spring.generate_batch([Q], batch_size=0), "batch_size"),
    Case("batch-items-string", lambda d: d.spring.generate_batch(Q), "items"),
    Case("stream-question-none", lambda d: d.spring.stream(None, P), "question"),
    Case("prompt-parts-bad-k", lambda d: d.spring.generate_from_prompt(PromptParts("ctx", 99, "Q?")), "k"),
    Case("decoding-unknown", lambda d: d.spring.generate(Q, P, decoding="beam"), "decoding"),
    # the integrations
    Case("langchain-documents-none-item", lambda d: d.chat.invoke(Q, documents=[None]), "documents[0]"),
    Case("langchain-documents-string", lambda d: d.chat.invoke(Q, documents="doc"), "documents"),
    Case("langchain-max-tokens-bool", lambda d: d.chat.invoke(Q, max_tokens=True), "max_new_tokens"),
    Case("langchain-temperature-nan", lambda d: d.chat.invoke(Q, temperature=float("nan")), "temperature"),
    Case("langchain-seed-string", lambda d: d.chat.invoke(Q, seed="abc"), "seed"),
    Case("langchain-k-bool", lambda d: d.chat.invoke(Q, documents=[Document(P[0])], k=True), "k"),
    Case("llama-index-answer-passages-none", lambda d: d.llama.answer(Q, None), "passages"),
    Case("llama-index-answer-query-none", lambda d: d.llama.answer(None, P), "question"),
    Case("llama-index-complete-stop-int", lambda d: d.llama.complete("Hello", stop=5), "stop"),
    Case("llama-index-complete-seed-float", lambda d: d.llama.complete("Hello", seed=0.5), "seed"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_value_is_a_spring_error_naming_the_argument(doors, case):
    with pytest.raises(SpringError) as raised:
        case.call(doors)
    assert case.argument in str(raised.value), str(raised.value)


def test_a_prompt_longer_than_the_context_window_names_both_lengths(doors):
    window = doors.spring.model.config.max_position_embeddings
    long_passage = "river mountain " * window
    both_lengths = rf"the prompt is \d+ tokens .* max_new_tokens=2 more, but the model's context window is {window}"
    with pytest.raises(ContextWindowError, match=both_lengths):
        doors.spring.generate(Q, [long_passage], k=2, max_new_tokens=2)
    with pytest.raises(ContextWindowError):
        doors.chat.invoke(long_passage + Q)
    for stream in (doors.spring.stream, lambda q, p: doors.spring.generate(q, p, decoding="rag-token")):
        with pytest.raises(ContextWindowError):
            stream(Q, [long_passage])
