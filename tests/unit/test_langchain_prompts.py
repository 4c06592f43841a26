"""SPRING prompt templates: the paper's order (context, block, question), equal to ``spring_core``'s layouts."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from langchain_spring import (
    SPRING_RAG_CHAT_PROMPT,
    SPRING_RAG_PROMPT,
    format_docs,
    looks_like_rag_prompt,
    spring_rag_chat_prompt,
    spring_rag_prompt,
)
from langchain_spring.chat_models import message_turns, render_messages
from spring_core.prompts import build_prompt, contains_marker, format_passages, marker_block

PASSAGES = [{"title": "Hamlet", "text": "Hamlet is a play by William Shakespeare."}, {"title": "", "text": "Paris."}]
QUESTION = "Who wrote Hamlet?"
CONTEXT = format_passages(PASSAGES)


def test_completion_template_is_the_raw_layout():
    assert SPRING_RAG_PROMPT.format(context=CONTEXT, question=QUESTION) == build_prompt(QUESTION, PASSAGES, 50).render()
    assert spring_rag_prompt(3).format(context=CONTEXT, question=QUESTION) == (
        "[1] (Title: Hamlet) Hamlet is a play by William Shakespeare.\n[2] Paris.\n\n[r1][r2][r3]"
        "Question: Who wrote Hamlet?\nAnswer:"
    )


def test_chat_template_rendered_by_chat_spring_is_the_chat_layout(tiny):
    _, tokenizer = tiny
    for k, template in [(50, SPRING_RAG_CHAT_PROMPT), (5, spring_rag_chat_prompt(5))]:
        messages = template.format_messages(context=CONTEXT, question=QUESTION)
        expected = build_prompt(QUESTION, PASSAGES, k, layout="chat", tokenizer=tokenizer).render()
        assert render_messages(message_turns(messages), tokenizer) == expected


def test_the_block_sits_between_context_and_question():
    text = spring_rag_prompt(4).format(context=CONTEXT, question=QUESTION)
    assert text.index(CONTEXT) + len(CONTEXT) < text.index(marker_block(4)) < text.index(f"Question: {QUESTION}")


def test_k_zero_has_no_block_and_negative_k_is_refused():
    assert not contains_marker(spring_rag_prompt(0).format(context=CONTEXT, question=QUESTION))
    with pytest.raises(ValueError, match="k must be"):
        spring_rag_chat_prompt(-1)


def test_format_docs_numbers_documents_like_format_passages():
    docs = [Document(page_content=p["text"], metadata={"title": p["title"], "id": str(i)})
            for i, p in enumerate(PASSAGES)]
    assert format_docs(docs) == CONTEXT
    assert format_docs([Document(page_content="No metadata.")]) == "[1] No metadata."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The hub's rlm/rag-prompt: question first, a "Context:" label, no block.
        ("You are an assistant for question-answering tasks. Use the following pieces of retrieved context to "
         "answer the question.\nQuestion: Who wrote Hamlet? \nContext: Hamlet is a play. \nAnswer:", True),
        (f"{CONTEXT}\n\nWho wrote Hamlet?", True),  # numbered passages and a question mark
        (spring_rag_prompt(4).format(context=CONTEXT, question=QUESTION), False),  # ours: has a block
        ("Hello, how are you?", False),  # a question but no context
        (CONTEXT, False),  # passages but no question
        ("Summarise this context: the meeting moved to Friday.", False),
    ],
)
def test_rag_prompt_heuristic(text, expected):
    assert looks_like_rag_prompt(text) is expected
