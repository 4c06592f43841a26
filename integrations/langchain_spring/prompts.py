"""Prompt templates in the SPRING layout, and the check that catches RAG prompts in another layout.

SPRING's virtual tokens were trained in one order: the retrieved passages, then the marker block
``[r1]..[rk]``, then the question. ``SPRING_RAG_PROMPT`` (a completion prompt, for ``SpringLLM``) and
``SPRING_RAG_CHAT_PROMPT`` (one user turn, for ``ChatSpring``) keep that order; both take ``context`` (the
passages numbered ``[1] (Title: t) text``, see ``chains.format_docs``) and ``question``. Rendered, they are exactly
what ``spring_core.build_prompt`` makes for the ``raw`` and ``chat`` layouts.

Popular RAG prompts, such as the hub's ``rlm/rag-prompt``, put the question *before* the context and carry no
marker block: the tokens do nothing there (the model reads the plain prompt). ``looks_like_rag_prompt`` spots such
prompts so that ``SpringLLM`` and ``ChatSpring`` can warn (``SpringLayoutWarning``) or, with ``strict=True``,
raise (``PromptLayoutError``) when one arrives while virtual tokens are loaded.

Example:
    >>> prompt = spring_rag_prompt(k=2)
    >>> prompt.format(context="[1] Hamlet is a play by Shakespeare.", question="Who wrote Hamlet?")
    '[1] Hamlet is a play by Shakespeare.\\n\\n[r1][r2]Question: Who wrote Hamlet?\\nAnswer:'
    >>> looks_like_rag_prompt("Question: Who wrote Hamlet?\\nContext: Hamlet is a play by Shakespeare.")
    True
"""

from __future__ import annotations

import re

from langchain_core.prompts import ChatPromptTemplate, PromptTemplate

from spring_core.errors import SpringError
from spring_core.prompts import contains_marker, marker_block

DEFAULT_K = 50
"""Virtual tokens in the block of the ready-made templates: the paper's ``n`` (``VirtualTokens``' default)."""

_NUMBERED_PASSAGE_RE = re.compile(r"(?m)^\s*\[1\]\s")
_CONTEXT_LABEL_RE = re.compile(r"(?i)\bcontext\s*:")
_QUESTION_RE = re.compile(r"(?i)\bquestion\s*:|\?")


class SpringLayoutWarning(UserWarning):
    """A RAG prompt without a marker block reached a model with virtual tokens: the tokens are not used."""


class PromptLayoutError(SpringError, ValueError):
    """Raised instead of ``SpringLayoutWarning`` when the model was built with ``strict=True``."""


def _template_text(k: int) -> str:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return "{context}\n\n" + marker_block(k) + "Question: {question}"


def spring_rag_prompt(k: int = DEFAULT_K) -> PromptTemplate:
    """The completion prompt ``{context}\\n\\n[r1]..[rk]Question: {question}\\nAnswer:`` (the paper's layout).

    ``k=0`` gives the same prompt without a block (the plain base model reads it).
    """
    return PromptTemplate.from_template(_template_text(k) + "\nAnswer:")


def spring_rag_chat_prompt(k: int = DEFAULT_K) -> ChatPromptTemplate:
    """One user turn ``{context}\\n\\n[r1]..[rk]Question: {question}``: SPRING's chat layout.

    The chat model renders it with the tokenizer's chat template, which opens the assistant turn.
    """
    return ChatPromptTemplate.from_messages([("human", _template_text(k))])


SPRING_RAG_PROMPT = spring_rag_prompt()
"""``spring_rag_prompt(50)``: context, ``[r1]..[r50]``, question, for ``SpringLLM``."""

SPRING_RAG_CHAT_PROMPT = spring_rag_chat_prompt()
"""``spring_rag_chat_prompt(50)``: the same text as one user turn, for ``ChatSpring``."""


def looks_like_rag_prompt(text: str) -> bool:
    """Whether ``text`` looks like a RAG prompt that lacks a marker block.

    The heuristic is deliberately simple: the text carries no marker, it holds retrieved context (a line that
    starts with ``[1]``, i.e. numbered passages, or a ``Context:`` label) *and* a question (a ``Question:`` label
    or a question mark). It can miss RAG prompts worded otherwise; it only exists to catch the common templates
    that would silently leave the virtual tokens unused.
    """
    if contains_marker(text):
        return False
    has_context = _NUMBERED_PASSAGE_RE.search(text) is not None or _CONTEXT_LABEL_RE.search(text) is not None
    return has_context and _QUESTION_RE.search(text) is not None
