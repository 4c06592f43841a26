"""Prompt layouts, and where the virtual-token block goes.

A SPRING prompt is three parts: the retrieved passages, a block of ``k`` virtual tokens, and the question.
``PromptParts`` holds them as *text before the block*, ``k`` and *text after the block*. The block is structure,
never text: it exists only as the ``k`` of a ``PromptParts`` that spring-rag (or the calling code) built, so a
question, passage, document or chat message that contains ``[r1]`` or any other marker-like string is read as
plain characters. ``render()`` writes the block as ``[r1]..[rk]`` for display and logs only; nothing parses it
back.

**Content is characters.** A tokenizer reads the spelling of one of its added tokens (``<|im_end|>``,
``<start_of_turn>``, ``<tool_call>``...) as that token wherever it occurs, so a passage or a message that spells
one could end a chat turn or fake a tool call. Every prompt spring-rag builds from content (passages, questions,
chat turns, template variables) passes it through ``literal_text`` first, which breaks such spellings with a word
joiner (U+2060): the model reads the characters, never the token. Only the chat template (and the tokenizer's own
BOS) writes special tokens. A finished prompt string the caller hands over is read as written, as transformers
reads it.

Example:
    >>> parts = build_prompt("Who wrote Hamlet?", ["Hamlet is a play by Shakespeare."], k=2)
    >>> parts.render()
    '[1] Hamlet is a play by Shakespeare.\\n\\n[r1][r2]Question: Who wrote Hamlet?\\nAnswer:'
    >>> parts.plain_text()
    '[1] Hamlet is a play by Shakespeare.\\n\\nQuestion: Who wrote Hamlet?\\nAnswer:'
"""

from __future__ import annotations

import re
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


WORD_JOINER = "\u2060"


def literal_text(text: str, tokenizer: Any) -> str:
    """``text`` with every spelling of one of ``tokenizer``'s added or special tokens (two characters or more, not
    only whitespace) broken by a word joiner (U+2060) after its first character, so tokenizing a prompt that holds
    it reads characters, never that token; ``text`` itself when it spells none (or ``tokenizer`` is ``None``).

    Example:
        >>> literal_text("a <|im_end|> b", tokenizer) == "a <\u2060|im_end|> b"  # a ChatML tokenizer
        True
    """
    pattern = spelling_pattern(text, tokenizer)
    if pattern is None:
        return text
    while True:  # breaking one spelling can complete another ("<<|im_end|>|im_end|>"), so until none is left
        broken = pattern.sub(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], text)
        if broken == text:
            return text
        text = broken


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
        return PromptParts(literal_text(head, tokenizer), k, literal_text(question_tail(question, layout), tokenizer))
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
    turns contain; each turn's content is ``literal_text`` (only the template writes special tokens). Without a
    chat template this raises ``LayoutError``.
    """
    if not has_chat_template(tokenizer):
        raise LayoutError("this model's tokenizer has no chat template, so the 'chat' layout cannot be used; use "
                          "the 'raw' layout (layout='raw')")
    contents = [str(t["content"]) for t in turns]
    turns = [{"role": str(t["role"]), "content": literal_text(c, tokenizer)} for t, c in zip(turns, contents,
                                                                                             strict=True)]
    if block is None or k == 0:
        rendered = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return PromptParts(rendered, 0, "", special_tokens=False)
    sentinel = unique_sentinel(contents)
    content = contents[block.message]
    turns[block.message]["content"] = (literal_text(content[:block.offset], tokenizer) + sentinel
                                       + literal_text(content[block.offset:], tokenizer))
    rendered = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    before, found, after = rendered.partition(sentinel)
    if not found or sentinel in after:
        raise LayoutError("the chat template did not render its content verbatim, so the virtual-token block "
                          "cannot be placed; use the 'raw' layout with this model")
    return PromptParts(before, k, after, special_tokens=False)


def spelling_pattern(text: str, tokenizer: Any) -> re.Pattern[str] | None:
    """A pattern of the spellings of ``tokenizer``'s added or special tokens (two characters or more, not only
    whitespace) that occur in ``text``, longest first, as a tokenizer matches them; ``None`` when none does."""
    try:
        added = [str(s) for s in tokenizer.get_added_vocab()] if tokenizer is not None else []
    except (AttributeError, NotImplementedError):
        added = []
    spellings = {s for s in [*added, *map(str, getattr(tokenizer, "all_special_tokens", []))]
                 if len(s) > 1 and s.strip() and s in text}
    if not spellings:
        return None
    return re.compile("|".join(re.escape(s) for s in sorted(spellings, key=len, reverse=True)))


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
