"""Prompt layouts and the virtual-token marker block.

A SPRING prompt is three parts: the retrieved passages, a block of ``k`` virtual tokens written as the markers
``[r1][r2]..[rk]``, and the question. ``PromptParts`` holds them as *text before the block*, ``k`` and *text after
the block*; the block itself never travels through the tokenizer, so marker-looking text inside a question or a
document can never become a virtual token.

Example:
    >>> parts = build_prompt("Who wrote Hamlet?", ["Hamlet is a play by Shakespeare."], k=2)
    >>> parts.render()
    '[1] Hamlet is a play by Shakespeare.\\n\\n[r1][r2]Question: Who wrote Hamlet?\\nAnswer:'
    >>> parse_prompt(parts.render(), n=50) == parts
    True
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spring_core.errors import MarkerError

DEFAULT_INSTRUCTION = (
    "According to the previous relevant passages, please answer the following question. "
    "Only return the answer without any other words."
)
"""The sentence the SPRING paper initialises its virtual tokens from."""

MARKER_TEMPLATE = "[r{i}]"
LAYOUTS = ("raw", "chat")
NO_K_LIMIT = 1 << 30  # an n for parsing a block of any size
_MARKER_RE = re.compile(r"\[r(\d+)\]")
_RUN_RE = re.compile(r"(?:\[r\d+\])+")

Passage = str | Mapping[str, Any]


def marker(i: int) -> str:
    """The marker string of virtual token ``i`` (1-based): ``marker(3) == "[r3]"``."""
    return MARKER_TEMPLATE.format(i=i)


def marker_block(k: int) -> str:
    """The block ``[r1][r2]..[rk]``; the empty string for ``k == 0``."""
    return "".join(marker(i) for i in range(1, k + 1))


def contains_marker(text: str) -> bool:
    """True if ``text`` holds anything that looks like a virtual-token marker."""
    return _MARKER_RE.search(text) is not None


@dataclass(frozen=True)
class PromptParts:
    """A prompt split around its marker block: ``before + [r1..rk] + after``.

    ``k == 0`` means no virtual tokens: the prompt is ``before + after`` and is fed to the base model unchanged.
    """

    before: str
    k: int = 0
    after: str = ""

    def render(self) -> str:
        """The prompt as text, with the marker block written out."""
        return self.before + marker_block(self.k) + self.after

    def plain_text(self) -> str:
        """The prompt without its marker block: what the base model alone would read."""
        return self.before + self.after


def format_passage(passage: Passage) -> str:
    """One passage as text: a string as it is, a ``{"title", "text"}`` mapping as ``(Title: t) text``."""
    if isinstance(passage, str):
        return passage
    if isinstance(passage, Mapping) and "text" in passage:
        title = str(passage.get("title") or "").strip()
        text = str(passage["text"])
        return f"(Title: {title}) {text}" if title else text
    raise TypeError(f"a passage must be a string or a mapping with a 'text' key, got {type(passage).__name__}")


def format_passages(passages: Sequence[Passage]) -> str:
    """Passages numbered as in the paper: ``[1] p1\\n[2] p2``."""
    return "\n".join(f"[{i}] {format_passage(p)}" for i, p in enumerate(passages, start=1))


def check_user_text(texts: Sequence[str], *, strict: bool, what: str = "user text") -> None:
    """Refuse (``strict``) or warn about marker strings inside text the user or a document supplied.

    With ``strict=False`` the text is kept and read as ordinary characters: only the block spliced in by
    spring-rag ever becomes virtual tokens.
    """
    for text in texts:
        found = _MARKER_RE.search(text)
        if found is None:
            continue
        message = (
            f"{what} contains the virtual-token marker {found.group(0)!r}; markers are reserved for the block "
            "spring-rag inserts between the passages and the question. Remove it from the text, or pass "
            "strict=False to read it as plain characters."
        )
        if strict:
            raise MarkerError(message)
        warnings.warn(message, stacklevel=3)


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
    the tokenizer's chat template (markers right before the question) and opens the assistant turn.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown prompt layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    context = format_passages(passages or [])
    head = context + "\n\n" if context else ""
    if layout == "raw":
        return PromptParts(head, k, question_tail(question, layout))
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("layout='chat' needs a tokenizer with a chat template; use layout='raw' for this model")
    sentinel = "\x00SPRING-BLOCK\x00"
    user_turn = head + sentinel + question_tail(question, layout)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_turn}], tokenize=False, add_generation_prompt=True
    )
    before, after = rendered.split(sentinel)
    return PromptParts(before, k, after)


def question_tail(question: str, layout: str = "raw") -> str:
    """What follows the marker block: ``Question: q`` plus, in the raw completion layout, ``\nAnswer:``."""
    return f"Question: {question}\nAnswer:" if layout == "raw" else f"Question: {question}"


def spring_template(k: int, layout: str = "raw", *, context: str = "{context}", question: str = "{question}") -> str:
    """A template string in the SPRING order (context, ``k`` markers, question) for prompt-template libraries.

    ``context`` and ``question`` are the placeholders to use, e.g. LlamaIndex's ``{context_str}``/``{query_str}``.
    In the ``chat`` layout the result is the user turn; the chat template is applied around it by the LLM.

    Example:
        >>> spring_template(2)
        '{context}\n\n[r1][r2]Question: {question}\nAnswer:'
    """
    return f"{context}\n\n{marker_block(k)}{question_tail(question, layout)}"


def parse_prompt(prompt: str, n: int, *, strict: bool = True) -> PromptParts:
    """Find the one marker block ``[r1]..[rk]`` in ``prompt`` (``k <= n``) and split the prompt around it.

    A prompt without markers gives ``PromptParts(prompt)``. Markers anywhere else, gaps, disorder, two blocks,
    or ``k > n`` raise ``MarkerError``; with ``strict=False`` they warn instead, and one block that starts at
    ``[r1]`` and counts up is used (cut to ``n``): the one right before ``Question:`` where the layout puts it,
    else the longest, else the last. Every other marker string stays plain text, so a marker quoted inside a
    question cannot take the block's place.
    """
    runs = [(m.start(), m.end(), [int(x) for x in _MARKER_RE.findall(m.group(0))]) for m in _RUN_RE.finditer(prompt)]
    if not runs:
        return PromptParts(prompt)

    problem = _describe_problem(runs, n)
    if problem is None:
        start, end, numbers = runs[0]
        return PromptParts(prompt[:start], len(numbers), prompt[end:])
    if strict:
        raise MarkerError(f"{problem} Pass strict=False to use the last well-formed block and read the rest as text.")

    warnings.warn(f"{problem} Using one well-formed block; other markers are read as text.", stacklevel=2)
    candidates = [
        (prompt[start + len(marker_block(k)):].startswith("Question:"), k, start)
        for start, _end, numbers in runs
        if (k := _counting_prefix(numbers))
    ]
    if not candidates:
        return PromptParts(prompt)
    _, k, start = max(candidates)
    k_used = min(k, n)
    # The run starts with [r1]..[rk_used]; whatever follows it stays in the text, as characters.
    return PromptParts(prompt[:start], k_used, prompt[start + len(marker_block(k_used)):])


def resize_block(prompt: str, k: int | None, *, strict: bool) -> str:
    """The prompt with its marker block rewritten as ``[r1]..[rk]`` (unchanged when ``k`` is None or no block)."""
    if k is None or not contains_marker(prompt):
        return prompt
    # Any size here: SpringModel checks k <= n when it parses the result.
    parts = parse_prompt(prompt, NO_K_LIMIT, strict=strict)
    if parts.k == 0:
        return prompt
    return PromptParts(parts.before, k, parts.after).render()


def _counting_prefix(numbers: list[int]) -> int:
    """How many of ``numbers`` count 1, 2, 3, ... from the start."""
    k = 0
    for expected, got in enumerate(numbers, start=1):
        if got != expected:
            break
        k = expected
    return k


def _describe_problem(runs: list[tuple[int, int, list[int]]], n: int) -> str | None:
    if len(runs) > 1:
        return f"the prompt holds {len(runs)} separate marker blocks; a SPRING prompt has exactly one."
    numbers = runs[0][2]
    if numbers != list(range(1, len(numbers) + 1)):
        shown = "".join(marker(i) for i in numbers[:8]) + ("..." if len(numbers) > 8 else "")
        return f"the marker block {shown} is not [r1][r2]..[rk] in order without gaps."
    if len(numbers) > n:
        if n == 0:
            return "the prompt holds a marker block but no virtual tokens are loaded (n = 0)."
        return f"the marker block asks for k = {len(numbers)} virtual tokens but only n = {n} exist."
    return None
