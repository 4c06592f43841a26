"""``SpringLLM`` on the tiny random Llama: raw prompts, batching, usage, streaming, stop strings, layout check."""

from __future__ import annotations

import asyncio

import pytest

from langchain_spring import SPRING_RAG_PROMPT, PromptLayoutError, SpringLayoutWarning, SpringLLM, spring_rag_prompt
from spring_core import SpringModel, VirtualTokens
from spring_core.prompts import format_passages

PASSAGES = [{"title": "Hamlet", "text": "Hamlet is a play by William Shakespeare."}, "Paris is in France."]


@pytest.fixture()
def sm(tiny):
    return SpringModel(*tiny, VirtualTokens.random(tiny[0], n=8, seed=1))


@pytest.fixture()
def llm(sm):
    return SpringLLM(spring_model=sm, max_tokens=10)


def rag_prompt(question: str, k: int = 8) -> str:
    return spring_rag_prompt(k).format(context=format_passages(PASSAGES), question=question)


def test_the_prompt_reaches_the_model_as_written(llm, sm):
    prompt = rag_prompt("Who wrote Hamlet?")
    result = llm.generate([prompt])
    reference = sm.generate_from_prompt(prompt, max_new_tokens=10)
    generation = result.generations[0][0]
    assert generation.text == reference.text == llm.invoke(prompt)
    usage = reference.usage
    assert generation.generation_info["usage_metadata"] == {
        "input_tokens": usage.prompt_tokens + usage.virtual_tokens, "output_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens, "input_token_details": {"virtual": 8},
    }
    assert generation.generation_info["finish_reason"] == reference.finish_reason
    assert result.llm_output == {
        "token_usage": {"prompt_tokens": usage.prompt_tokens, "virtual_tokens": 8,
                        "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens},
        "model_name": sm.name,
    }


def test_batch_is_one_padded_batch_with_the_one_by_one_answers(llm):
    prompts = [rag_prompt("Who wrote Hamlet?"), rag_prompt("Where is Paris?", k=3), "Question: Hi?\nAnswer:"]
    one_by_one = [llm.invoke(p) for p in prompts]
    assert llm.batch(prompts) == one_by_one
    assert asyncio.run(llm.abatch(prompts)) == one_by_one
    usage = llm.generate(prompts).llm_output["token_usage"]
    assert usage["virtual_tokens"] == 8 + 3 + 0


def test_stream_and_astream_join_to_the_invoke_answer(llm):
    prompt = rag_prompt("Who wrote Hamlet?")
    answer = llm.invoke(prompt)
    chunks = list(llm.stream(prompt))
    assert len(chunks) > 2 and "".join(chunks) == answer
    generation = llm.generate([prompt]).generations[0][0]
    streamed = None
    for chunk in llm._stream(prompt):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.text == answer
    assert streamed.generation_info["usage_metadata"] == generation.generation_info["usage_metadata"]

    async def collect():
        return [chunk async for chunk in llm.astream(prompt)]

    assert "".join(asyncio.run(collect())) == answer
    assert asyncio.run(llm.ainvoke(prompt)) == answer


def test_stop_from_the_constructor_and_per_call_are_merged(sm):
    prompt = rag_prompt("Who wrote Hamlet?")
    full = SpringLLM(spring_model=sm, max_tokens=24).invoke(prompt)
    pieces = [full[i:i + 2] for i in range(2, len(full) - 1) if full[i:i + 2].isalnum()]
    early, late = next(p for p in pieces if full.index(p) >= 2), next(p for p in pieces if full.index(p) >= 8)
    llm = SpringLLM(spring_model=sm, max_tokens=24, stop=[late])
    assert llm.invoke(prompt) == full[: full.index(late)]
    assert llm.invoke(prompt, stop=[early]) == full[: full.index(early)]


def test_k_resizes_the_block(llm, sm):
    prompt = rag_prompt("Who wrote Hamlet?", k=8)
    info = llm.generate([prompt], k=2).generations[0][0].generation_info
    assert info["usage_metadata"]["input_token_details"] == {"virtual": 2}
    plain = SpringLLM(spring_model=sm, max_tokens=10, k=0).invoke(prompt)
    assert plain == sm.generate_from_prompt(rag_prompt("Who wrote Hamlet?", k=0), max_new_tokens=10).text


def test_hub_style_rag_prompt_warns_or_raises(sm):
    hub_style = f"Question: Who wrote Hamlet?\nContext: {format_passages(PASSAGES)}\nAnswer:"
    with pytest.warns(SpringLayoutWarning):
        SpringLLM(spring_model=sm, max_tokens=2).invoke(hub_style)
    with pytest.raises(PromptLayoutError):
        SpringLLM(spring_model=sm, max_tokens=2, strict=True).invoke(hub_style)


def test_template_and_llm_compose(llm, sm):
    chain = SPRING_RAG_PROMPT | SpringLLM(spring_model=sm, max_tokens=4, k=8)
    answer = chain.invoke({"context": format_passages(PASSAGES), "question": "Who wrote Hamlet?"})
    assert answer == llm.invoke(rag_prompt("Who wrote Hamlet?", k=8), max_tokens=4)


def test_llm_type_and_standard_params(llm, sm):
    assert llm._llm_type == "spring"
    assert llm._get_ls_params(stop=["\n"]) == {
        "ls_provider": "spring", "ls_model_name": sm.name, "ls_model_type": "llm", "ls_temperature": 0.0,
        "ls_max_tokens": 10, "ls_stop": ["\n"],
    }
