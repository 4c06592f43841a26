"""RAG templates for training: filled and given their block by the rule the integrations use at inference."""

from __future__ import annotations

import json

import pytest
import torch
from test_trainer import config, write_qa

from spring_core import SpringModel, VirtualTokens
from spring_core.prompts.templates import (
    CONTEXT_FORMATS,
    RLM_RAG_PROMPT,
    TEMPLATE_SETS,
    TEMPLATES,
    render_template,
)
from spring_train.batching import answer_loss_sum, build_example, collate
from spring_train.trainer import train

QUESTION, PASSAGES = "Who wrote Hamlet?", ["Hamlet is a play by Shakespeare."]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_puts_the_block_between_the_context_and_the_question(name, tiny):
    parts = render_template(TEMPLATES[name], QUESTION, PASSAGES, 4, tiny[1])
    assert parts.k == 4
    assert CONTEXT_FORMATS[TEMPLATES[name].context](PASSAGES) in parts.before
    if name.startswith("rlm-rag-prompt"):  # the question comes first there: after the context, the block, asked again
        assert QUESTION in parts.before and parts.after.startswith(f"{QUESTION}\nAnswer:")
    else:
        assert QUESTION not in parts.before and QUESTION in parts.after
    assert parts.special_tokens is not TEMPLATES[name].is_chat
    assert render_template(TEMPLATES[name], QUESTION, PASSAGES, 0, tiny[1]).k == 0


def test_the_templates_agree_with_the_integrations():
    assert render_template(TEMPLATES["spring-raw"], QUESTION, PASSAGES, 3).render() == (
        "[1] Hamlet is a play by Shakespeare.\n\n[r1][r2][r3]Question: Who wrote Hamlet?\nAnswer:")
    assert render_template(TEMPLATES["llamaindex-text-qa"], QUESTION, PASSAGES, 1).after == (
        "Query: Who wrote Hamlet?\nAnswer: ")
    assert TEMPLATE_SETS["varied"] == tuple(TEMPLATES) and TEMPLATE_SETS["spring"] == ()
    assert TEMPLATE_SETS["chat"] == ("spring-chat", "langchain-tutorial", "rlm-rag-prompt-chat")


def test_the_rlm_chat_template_is_the_prompt_chat_spring_reads_in_langgraphs_rag_tutorial(tiny):
    """LangGraph's tutorial sends the hub's rlm/rag-prompt to a chat model as one human message; ChatSpring places
    the block from the template's variables and asks the question again after it. Training must see that prompt."""
    from langchain_spring.chat_models import render_messages
    from langchain_spring.placement import find_placement
    from langchain_spring.tracking import RunSignals

    context = CONTEXT_FORMATS["joined"](PASSAGES)
    text = RLM_RAG_PROMPT.format(question=QUESTION, context=context)
    placement, signal = find_placement([text], ["user"], RunSignals(template_inputs=(
        {"question": QUESTION, "context": context},)))
    read = render_messages([{"role": "user", "content": text}], tiny[1], placement, 4)
    trained = render_template(TEMPLATES["rlm-rag-prompt-chat"], QUESTION, PASSAGES, 4, tiny[1])
    assert signal == "template" and (trained.before, trained.k, trained.after) == (read.before, read.k, read.after)
    assert trained.after.startswith(f"{QUESTION}\nAnswer:")


def test_each_context_is_written_as_its_ecosystem_writes_retrieved_passages(tiny):
    from llama_index.core import PromptHelper
    from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT
    from llama_index.core.schema import MetadataMode, TextNode

    passages = [{"title": "Hamlet", "text": "Hamlet is a play."}, {"title": "", "text": "It is set in Denmark."}]
    nodes = [TextNode(text=p["text"], metadata={"title": p["title"]} if p["title"] else {}) for p in passages]
    # what LlamaIndex's compact synthesizer fills into text_qa's {context_str}
    packed = PromptHelper(context_window=4096).repack(
        DEFAULT_TEXT_QA_PROMPT, [node.get_content(metadata_mode=MetadataMode.LLM) for node in nodes])
    assert packed == [CONTEXT_FORMATS["llamaindex"](passages)]
    # LangChain's format_docs / stuff-documents chain: page_content joined by blank lines, no titles
    assert CONTEXT_FORMATS["joined"](passages) == "Hamlet is a play.\n\nIt is set in Denmark."
    assert CONTEXT_FORMATS["numbered"](passages) == "[1] (Title: Hamlet) Hamlet is a play.\n[2] It is set in Denmark."
    chat = render_template(TEMPLATES["langchain-tutorial"], QUESTION, passages, 2, tiny[1])
    assert "concise.\n\nHamlet is a play.\n\nIt is set in Denmark." in chat.before
    assert [TEMPLATES[name].context for name in ("spring-raw", "spring-chat", "llamaindex-text-qa",
                                                 "langchain-retrievalqa", "langchain-tutorial")] == [
        "numbered", "numbered", "llamaindex", "joined", "joined"]


def test_answers_follow_a_cue_with_a_space_and_a_trailing_space_or_chat_turn_without(tiny):
    sm = SpringModel(*tiny)
    spaced = build_example(sm, question=QUESTION, passages=PASSAGES, answer="Shakespeare", k=0,
                           template=TEMPLATES["langchain-retrievalqa"])
    tight = build_example(sm, question=QUESTION, passages=PASSAGES, answer="Shakespeare", k=0,
                          template=TEMPLATES["llamaindex-text-qa"])
    answer = sm.tokenizer(" Shakespeare", add_special_tokens=False)["input_ids"]
    assert spaced.input_ids[-spaced.answer_length:-1] == answer
    assert tight.input_ids[-tight.answer_length:-1] == sm.tokenizer("Shakespeare", add_special_tokens=False)[
        "input_ids"]


def template_loss(sm: SpringModel, rows: list[dict]) -> float:
    """Mean answer loss over every template and ``rows``, with all of ``sm``'s tokens."""
    examples = [build_example(sm, question=r["question"], passages=r["passages"], answer=r["answers"][0], k=sm.n,
                              template=t) for t in TEMPLATES.values() for r in rows]
    batch = collate(examples, pad_id=sm.pad_token_id)
    with torch.inference_mode():
        logits = sm.model(inputs_embeds=sm.embed(batch.input_ids), attention_mask=batch.attention_mask).logits
    return float(answer_loss_sum(logits[:, -(batch.labels.shape[1] + 1):], batch.labels)) / batch.answer_tokens


def test_training_with_varied_templates_lowers_the_loss_in_every_template(tiny, tiny_dir, tmp_path):
    qa = write_qa(tmp_path / "qa.jsonl")
    rows = [json.loads(line) for line in qa.read_text().splitlines()][:4]
    before = template_loss(SpringModel(*tiny, VirtualTokens.from_text(tiny[0], n=6, tokenizer=tiny[1])), rows)
    train(config(tiny_dir, qa, tmp_path / "art", epochs=6, templates="varied"), show_progress=False)
    after = template_loss(SpringModel(*tiny, VirtualTokens.load(tmp_path / "art", model=tiny[0])), rows)
    assert after < before
    manifest = json.loads((tmp_path / "art" / "spring.json").read_text())
    assert manifest["training"]["templates"] == "varied"
