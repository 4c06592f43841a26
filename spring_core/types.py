"""The values that travel through a call: prompts, settings, results. Plain data, no torch.

``PromptParts`` is a prompt split around its virtual-token block; ``GenerationSettings`` are the decoding
settings after validation (``spring_core.options.generation_settings`` builds them); ``Generation`` is what every
backend and decoding mode returns, with its ``Usage``.

Example:
    >>> parts = PromptParts("[1] Paris is in France.\\n\\n", 2, "Question: Where is Paris?\\nAnswer:")
    >>> parts.render()
    '[1] Paris is in France.\\n\\n[r1][r2]Question: Where is Paris?\\nAnswer:'
    >>> Usage(prompt_tokens=12, completion_tokens=3, virtual_tokens=5).total_tokens
    20
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MARKER_TEMPLATE = "[r{i}]"

Passage = str | Mapping[str, Any]
"""A retrieved passage: its text, or a mapping with ``text`` and an optional ``title``."""


def marker_block(k: int) -> str:
    """The display string ``[r1][r2]..[rk]``; the empty string for ``k == 0``."""
    return PromptParts("", k).render()


@dataclass(frozen=True)
class PromptParts:
    """A prompt split around its virtual-token block: ``before + [r1..rk] + after``.

    ``k == 0`` means no virtual tokens: the prompt is ``before + after`` and is fed to the base model unchanged.
    ``special_tokens=False`` marks text rendered by a chat template, which already holds the template's BOS: it is
    tokenized without adding the tokenizer's special tokens again (as ``apply_chat_template(tokenize=True)`` does).

    Example:
        >>> PromptParts("ctx\\n", 1, "Q?").with_k(3).render()
        'ctx\\n[r1][r2][r3]Q?'
    """

    before: str
    k: int = 0
    after: str = ""
    special_tokens: bool = True

    def render(self) -> str:
        """The prompt for display, with the block written as ``[r1]..[rk]`` (never parsed back); also
        ``str(parts)``, so logs and callbacks that print a prompt show it this way."""
        markers = "".join(MARKER_TEMPLATE.format(i=i) for i in range(1, self.k + 1))
        return self.before + markers + self.after

    __str__ = render

    def plain_text(self) -> str:
        """The prompt without its block: what the base model alone would read."""
        return self.before + self.after

    def with_k(self, k: int) -> PromptParts:
        """The same prompt with a block of ``k`` tokens at the same place."""
        return PromptParts(self.before, k, self.after, self.special_tokens)


@dataclass(frozen=True)
class BlockAt:
    """Where a block goes in a list of texts (chat turns, or one prompt): text ``message``, character ``offset``."""

    message: int
    offset: int


@dataclass
class Usage:
    """Token counts of one generation; virtual tokens are counted apart from the prompt's real tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    virtual_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.virtual_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        """The four counts by name (``prompt_tokens``, ``completion_tokens``, ``virtual_tokens``, ``total_tokens``)."""
        counts = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                  "virtual_tokens": self.virtual_tokens}
        return {**counts, "total_tokens": sum(counts.values())}


@dataclass(frozen=True)
class GenerationSettings:
    """Validated decoding settings (build them with ``spring_core.options.generation_settings``);
    ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0  # end-of-sequence is ignored until this many tokens (benchmarks of equal lengths)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Generation:
    """What every generation returns: the answer text, its token usage and why generation ended.

    ``finish_reason`` is ``"stop"`` (end of sequence or a stop string, matched on ``text`` as returned) or
    ``"length"`` (``max_new_tokens`` reached). ``token_ids`` are the generated ids counted in
    ``usage.completion_tokens`` (the final end-of-sequence id included). The marginal decoding modes also fill
    ``weights`` (``p(z|x)`` per passage, in passage order) and, for RAG-Sequence, ``candidates``
    (``(text, log p(y|x))``, best first).
    """

    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"
    prompt: str = ""  # the prompt for display and logs, its block written as [r1]..[rk] (``PromptParts.render``)
    token_ids: list[int] = field(default_factory=list)
    weights: list[float] | None = None
    candidates: list[tuple[str, float]] = field(default_factory=list)
