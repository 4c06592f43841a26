"""Token healing for RAG prompts that end in spaces (LlamaIndex's default ``text_qa`` ends with ``"Answer: "``).

A byte-level BPE tokenizer writes the space before a word inside the word's token (``" Paris"`` is one token).
A prompt that ends with a space therefore ends with a lone space token that the model rarely saw before an
answer, and it reads it as "a number follows" (SmolLM2 then answers with a digit far more often). Healing
removes the trailing spaces from the prompt and lets the first generated token supply them: that token is
constrained to the ids whose text starts with the removed spaces, and the spaces are cut from the answer again.

Only prompts with a virtual-token block are healed: a prompt without one is the base model's, token for token.

Example:
    >>> healed, spaces = heal(PromptParts("Context ...\\n", 2, "Query: Who?\\nAnswer: "))
    >>> healed.after, spaces
    ('Query: Who?\\nAnswer:', ' ')
    >>> visible("  Paris", spaces)
    ' Paris'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from spring_core.types import PromptParts


@dataclass(frozen=True)
class Healed:
    """The prompt generation feeds (``parts``), the trailing spaces healed off it (``""``: none) and the ids its
    first new token may take (``None``: any)."""

    parts: PromptParts
    spaces: str = ""
    first_ids: torch.Tensor | None = None


def heal(parts: PromptParts) -> tuple[PromptParts, str]:
    """``parts`` without the spaces that end it, and those spaces (``""``: nothing to heal).

    A prompt without a block, or whose block is its last part, is returned unchanged.
    """
    if parts.k == 0 or not parts.after.endswith(" "):
        return parts, ""
    after = parts.after.rstrip(" ")
    return PromptParts(parts.before, parts.k, after, parts.special_tokens), parts.after[len(after):]


def visible(text: str, spaces: str) -> str:
    """The answer without the healed ``spaces`` its first token supplied (tokenizers that drop a leading space
    when decoding have none to cut)."""
    return text[len(spaces):] if spaces and text.startswith(spaces) else text


def allowed_first_ids(tokenizer: Any, spaces: str) -> torch.Tensor:
    """The ids whose text starts with ``spaces`` (``InputLayer.heal`` caches them per input layer).

    Each id is decoded after an anchor token, because SentencePiece decoders drop the leading space of a
    sequence's first token.
    """
    anchor = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    lead = len(tokenizer.decode(anchor))
    texts = tokenizer.batch_decode([[*anchor, i] for i in range(len(tokenizer))])
    return torch.tensor([i for i, text in enumerate(texts) if text[lead:].startswith(spaces)])
