"""Token accounting and stop strings, shared by ``SpringModel`` and the marginal decoders.

Example:
    >>> Usage(prompt_tokens=12, completion_tokens=3, virtual_tokens=5).total_tokens
    20
    >>> cut_at_stop("Paris.\\nQuestion:", ["\\nQuestion"])
    ('Paris.', True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


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
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "virtual_tokens": self.virtual_tokens, "total_tokens": self.total_tokens}


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    hits = [text.find(s) for s in stops if s in text]
    return (text[:min(hits)], True) if hits else (text, False)


def tokens_until_stop(generated: Sequence[int], stops: Sequence[str], decode: Callable[[list[int]], str]) -> int:
    """The length of the shortest prefix of ``generated`` whose text (``decode``) contains a stop string."""
    for size in range(1, len(generated) + 1):
        if cut_at_stop(decode(list(generated[:size])), stops)[1]:
            return size
    return len(generated)
