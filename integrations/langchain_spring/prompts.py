"""Prompt templates in SPRING's own layout: the retrieved context, then the question.

SPRING's virtual tokens were trained in one order: the retrieved passages, then the block ``[r1]..[rk]``, then the
question. The templates hold no markers: ``SpringLLM`` and ``ChatSpring`` place the block between the context and
the question of whatever prompt a chain uses. These two give exactly the layouts the tokens are trained with:
``SPRING_RAG_PROMPT`` (a completion prompt, for ``SpringLLM``: the ``raw`` layout) and ``SPRING_RAG_CHAT_PROMPT``
(one user turn, for ``ChatSpring``: the ``chat`` layout). Both take ``context`` (the passages numbered
``[1] (Title: t) text``, see ``chains.format_docs``) and ``question``.

Example:
    >>> SPRING_RAG_PROMPT.format(context="[1] Hamlet is a play by Shakespeare.", question="Who wrote Hamlet?")
    '[1] Hamlet is a play by Shakespeare.\\n\\nQuestion: Who wrote Hamlet?\\nAnswer:'
"""

from __future__ import annotations

from langchain_core.prompts import ChatPromptTemplate, PromptTemplate

from spring_core.prompts.layouts import spring_template

SPRING_RAG_PROMPT = PromptTemplate.from_template(spring_template("raw"))
"""Context, then ``Question: {question}\\nAnswer:``: the paper's completion layout, for ``SpringLLM``."""

SPRING_RAG_CHAT_PROMPT = ChatPromptTemplate.from_messages([("human", spring_template("chat"))])
"""The same context and question as one user turn: SPRING's chat layout, for ``ChatSpring``."""
