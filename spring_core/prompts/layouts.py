"""Prompt layouts, and where the virtual-token block goes.

A SPRING prompt is three parts: the retrieved passages, a block of ``k`` virtual tokens, and the question.
``PromptParts`` holds them as *text before the block*, ``k`` and *text after the block*. The block is structure,
never text: it exists only as the ``k`` of a ``PromptParts`` that spring-rag (or the calling code) built, so a
question, passage, document or chat message that contains ``[r1]`` or any other marker-like string is read as
plain characters. ``render()`` writes the block as ``[r1]..[rk]`` for display and logs only; nothing parses it
back.

Example:
    >>> parts = build_prompt("Who wrote Hamlet?", ["Hamlet is a play by Shakespeare."], k=2)
    >>> parts.render()
    '[1] Hamlet is a play by Shakespeare.\\n\\n[r1][r2]Question: Who wrote Hamlet?\\nAnswer:'
    >>> parts.plain_text()
    '[1] Hamlet is a play by Shakespeare.\\n\\nQuestion: Who wrote Hamlet?\\nAnswer:'
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from spring_core import options
from spring_core.errors import LayoutError
from spring_core.types import BlockAt, Passage, PromptParts

DEFAULT_INSTRUCTION = (
    "According to the previous relevant passages, please answer the following question. "
    "Only return the answer without any other words."
)
"""The sentence the SPRING paper initialises its virtual tokens from."""


def passage_title_and_text(passage: Passage) -> tuple[str, str]:
    """A passage's title (``""`` for a string or a mapping without one) and its text."""
    if isinstance(passage, str):
        return "", passage
    if isinstance(passage, Mapping) and "text" in passage:
        return str(passage.get("title") or "").strip(), str(passage["text"])
    raise TypeError(f"a passage must be a string or a mapping with a 'text' key, got {type(passage).__name__}")


def format_passage(passage: Passage) -> str:
    """One passage as text: a string as it is, a ``{"title", "text"}`` mapping as ``(Title: t) text``."""
    title, text = passage_title_and_text(passage)
    return f"(Title: {title}) {text}" if title else text


def format_passages(passages: Sequence[Passage]) -> str:
    """Passages numbered as in the paper: ``[1] p1\\n[2] p2``."""
    return "\n".join(f"[{i}] {format_passage(p)}" for i, p in enumerate(passages, start=1))


def question_tail(question: str, layout: str = "raw") -> str:
    """What follows the block: ``Question: q`` plus, in the raw completion layout, ``\\nAnswer:``."""
    return f"Question: {question}\nAnswer:" if layout == "raw" else f"Question: {question}"


def build_prompt(
    question: str,
    passages: Sequence[Passage] | None = None,
    k: int = 0,
    *,
    layout: str = "raw",
    tokenizer: Any = None,
) -> PromptParts:
    """Build the SPRING layout: passages, then ``k`` virtual tokens, then the question.

    ``layout="raw"`` is the paper's completion prompt; ``layout="chat"`` puts the same text in one user turn of
    the tokenizer's chat template (block right before the question) and opens the assistant turn.
    """
    options.choice("layout", layout, options.LAYOUTS)
    context = format_passages(passages or [])
    head = context + "\n\n" if context else ""
    if layout == "raw":
        return PromptParts(head, k, question_tail(question, layout))
    turn = {"role": "user", "content": head + question_tail(question, layout)}
    return render_chat(tokenizer, [turn], BlockAt(0, len(head)), k)


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer: Any, turns: Sequence[Mapping[str, str]], block: BlockAt | None = None,
                k: int = 0) -> PromptParts:
    """Turns ``[{"role", "content"}]`` rendered with the chat template, assistant turn opened, with a ``k``-token
    block at ``block`` (a turn and a character offset in its content).

    The block's place is marked with a random sentinel that no content holds, so the split is exact whatever the
    turns contain. Without a chat template this raises ``LayoutError``.
    """
    if not has_chat_template(tokenizer):
        raise LayoutError("this model's tokenizer has no chat template, so the 'chat' layout cannot be used; use "
                          "the 'raw' layout (layout='raw')")
    turns = [{"role": str(t["role"]), "content": str(t["content"])} for t in turns]
    if block is None or k == 0:
        rendered = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return PromptParts(rendered, 0, "", special_tokens=False)
    sentinel = unique_sentinel(t["content"] for t in turns)
    content = turns[block.message]["content"]
    turns[block.message] = {**turns[block.message],
                            "content": content[:block.offset] + sentinel + content[block.offset:]}
    rendered = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    before, found, after = rendered.partition(sentinel)
    if not found or sentinel in after:
        raise LayoutError("the chat template did not render its content verbatim, so the virtual-token block "
                          "cannot be placed; use the 'raw' layout with this model")
    return PromptParts(before, k, after, special_tokens=False)


def unique_sentinel(texts: Any = ()) -> str:
    """A fresh marker string that occurs in none of ``texts`` (private-use characters around 64 random bits)."""
    texts = list(texts)
    while True:
        sentinel = f"\ue000{secrets.token_hex(8)}\ue001"
        if not any(sentinel in text for text in texts):
            return sentinel


def spring_template(layout: str = "raw", *, context: str = "{context}", question: str = "{question}") -> str:
    """A template string in the SPRING order (context, then the question) for prompt-template libraries.

    It holds no markers: spring-rag's LLM components place the block between the context and the question
    themselves. ``context`` and ``question`` are the placeholders, e.g. LlamaIndex's ``{context_str}`` and
    ``{query_str}``. In the ``chat`` layout the result is the user turn.

    Example:
        >>> spring_template()
        '{context}\\n\\nQuestion: {question}\\nAnswer:'
    """
    return f"{context}\n\n{question_tail(question, layout)}"
