"""SPRING prompt templates: the paper's order (context, question), equal to ``spring_core``'s layouts once the
model places the block."""

from __future__ import annotations

from langchain_core.documents import Document

from langchain_spring import SPRING_RAG_CHAT_PROMPT, SPRING_RAG_PROMPT, format_docs
from langchain_spring.chat_models import message_turns, render_messages
from spring_core.prompts.layouts import build_prompt, format_passages

PASSAGES = [{"title": "Hamlet", "text": "Hamlet is a play by William Shakespeare."}, {"title": "", "text": "Paris."}]
QUESTION = "Who wrote Hamlet?"
CONTEXT = format_passages(PASSAGES)


def test_completion_template_is_the_raw_layout_without_a_block():
    assert SPRING_RAG_PROMPT.format(context=CONTEXT, question=QUESTION) == build_prompt(QUESTION, PASSAGES, 0).render()
    assert "[r1]" not in SPRING_RAG_PROMPT.template


def test_chat_template_rendered_by_chat_spring_is_the_chat_layout(tiny):
    _, tokenizer = tiny
    messages = SPRING_RAG_CHAT_PROMPT.format_messages(context=CONTEXT, question=QUESTION)
    expected = build_prompt(QUESTION, PASSAGES, 0, layout="chat", tokenizer=tokenizer)
    assert render_messages(message_turns(messages), tokenizer) == expected


def test_format_docs_numbers_documents_like_format_passages():
    docs = [Document(page_content=p["text"], metadata={"title": p["title"], "id": str(i)})
            for i, p in enumerate(PASSAGES)]
    assert format_docs(docs) == CONTEXT
    assert format_docs([Document(page_content="No metadata.")]) == "[1] No metadata."
