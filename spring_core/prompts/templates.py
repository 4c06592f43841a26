"""RAG templates people use, rendered with the block where spring-rag's integrations put it.

Training with varied templates (``spring-rag train --templates varied``) teaches the tokens the layouts they meet
after a one-line swap into an existing LlamaIndex or LangChain app, not only SPRING's own. Each template is
filled here with its context written the way its ecosystem writes retrieved passages, and the block is placed by
``spring_core.prompts.placement.place_block``, the rule the integrations apply at inference, so training and inference
see the same prompt.

Example:
    >>> template = TEMPLATES["llamaindex-text-qa"]
    >>> parts = render_template(template, "Who wrote Hamlet?", ["Hamlet is a play by Shakespeare."], k=2)
    >>> parts.render().splitlines()[-2:]
    ['[r1][r2]Query: Who wrote Hamlet?', 'Answer: ']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from spring_core.prompts.layouts import (
    format_passages,
    passage_title_and_text,
    render_chat,
    spring_template,
)
from spring_core.prompts.placement import Span, fill_placeholders, place_block
from spring_core.types import Passage, PromptParts


def _llamaindex_node(passage: Passage) -> str:
    """A node as LlamaIndex shows it to the LLM (``MetadataMode.LLM``): ``title: t``, a blank line, the text."""
    title, text = passage_title_and_text(passage)
    return f"title: {title}\n\n{text}" if title else text


CONTEXT_FORMATS: dict[str, Callable[[Sequence[Passage]], str]] = {
    "numbered": format_passages,
    "joined": lambda passages: "\n\n".join(passage_title_and_text(p)[1] for p in passages),
    "llamaindex": lambda passages: "\n\n".join(_llamaindex_node(p) for p in passages),
}
"""How a template's ``{context}`` is written: ``numbered`` is SPRING's ``[1] (Title: t) text`` lines; ``joined``
is the passages' text separated by blank lines (LangChain's ``format_docs`` and stuff-documents chain join
``page_content`` so); ``llamaindex`` is each node with its title metadata, separated by blank lines."""


@dataclass(frozen=True)
class RagTemplate:
    """A RAG prompt: turns of ``(role, text)`` holding ``{context}`` and ``{question}``; the single role ``raw``
    is a completion prompt, any other roles are chat turns rendered with the model's chat template. ``context``
    names how the passages are written into ``{context}`` (a key of ``CONTEXT_FORMATS``)."""

    name: str
    turns: tuple[tuple[str, str], ...]
    context: str = "numbered"

    @property
    def is_chat(self) -> bool:
        return self.turns[0][0] != "raw"


RLM_RAG_PROMPT = ("You are an assistant for question-answering tasks. Use the following pieces of retrieved context "
                  "to answer the question. If you don't know the answer, just say that you don't know. Use three "
                  "sentences maximum and keep the answer concise.\nQuestion: {question} \nContext: {context} "
                  "\nAnswer:")
"""LangChain hub's ``rlm/rag-prompt`` (LangGraph's RAG tutorial): the question *before* the context."""


def _raw(name: str, text: str, context: str) -> RagTemplate:
    return RagTemplate(name, (("raw", text),), context)


TEMPLATES: dict[str, RagTemplate] = {t.name: t for t in (
    _raw("spring-raw", spring_template("raw"), "numbered"),
    RagTemplate("spring-chat", (("user", spring_template("chat")),)),
    _raw("llamaindex-text-qa", "Context information is below.\n---------------------\n{context}\n"
                               "---------------------\nGiven the context information and not prior knowledge, "
                               "answer the query.\nQuery: {question}\nAnswer: ", "llamaindex"),
    _raw("langchain-retrievalqa", "Use the following pieces of context to answer the question at the end. If you "
                                  "don't know the answer, just say that you don't know, don't try to make up an "
                                  "answer.\n\n{context}\n\nQuestion: {question}\nHelpful Answer:", "joined"),
    RagTemplate("langchain-tutorial", (("system", "You are an assistant for question-answering tasks. Use the "
                                                  "following pieces of retrieved context to answer the question. "
                                                  "If you don't know the answer, say that you don't know. Use three "
                                                  "sentences maximum and keep the answer concise.\n\n{context}"),
                                       ("user", "{question}")), "joined"),
    _raw("rlm-rag-prompt", RLM_RAG_PROMPT, "joined"),
    RagTemplate("rlm-rag-prompt-chat", (("user", RLM_RAG_PROMPT),), "joined"),
    _raw("paraphrase-passages", "Passages:\n{context}\n\nAnswer the question using the passages above.\n"
                                "Q: {question}\nA:", "numbered"),
    _raw("paraphrase-background", "Here is some background information.\n\n{context}\n\nWith that in mind, "
                                  "what is the answer to this question?\n{question}\nShort answer:", "joined"),
)}
"""The templates ``--templates varied`` draws from: SPRING's two layouts, the ecosystems' defaults, paraphrases."""

TEMPLATE_SETS = {"spring": (), "varied": tuple(TEMPLATES),
                 "chat": tuple(name for name, template in TEMPLATES.items() if template.is_chat)}
"""``spring``: the model's own layout only (``SpringModel.prompt_parts``); ``varied``: every template above;
``chat``: the chat ones (SPRING's chat layout, LangChain's RAG tutorial), for apps that run a chat model."""


def render_template(template: RagTemplate, question: str, passages: Sequence[Passage], k: int,
                    tokenizer: Any = None) -> PromptParts:
    """``template`` filled with the passages (written as ``template.context`` says) and the question, a
    ``k``-token block placed by the integrations' rule (``place_block``)."""
    values = {"context": CONTEXT_FORMATS[template.context](passages), "question": question}
    texts, context, questions = [], [], []
    for index, (_, text) in enumerate(template.turns):
        filled, spans = fill_placeholders(text, {name: "{" + name + "}" for name in values}, values, tokenizer)
        texts.append(filled)
        context += [Span(index, a, b) for name, a, b in spans if name == "context"]
        questions += [Span(index, a, b) for name, a, b in spans if name == "question"]
    placement = place_block(texts, context, questions) if k else None
    if placement is not None:  # a question-first template asks its question again after the block
        texts = placement.restate(texts, k)
    if template.is_chat:
        turns = [{"role": role, "content": text} for (role, _), text in zip(template.turns, texts, strict=True)]
        return render_chat(tokenizer, turns, placement.at if placement else None, k)
    text = texts[0]
    if placement is None:
        return PromptParts(text)
    return PromptParts(text[:placement.at.offset], k, text[placement.at.offset:])

