"""``Request``: one call as every front end hands it to the engine, checked when it is made.

Example:
    >>> Request(prompt="Question: 2+2?\\nAnswer:", settings={"max_new_tokens": 4}).settings.max_new_tokens
    4
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spring_core import options
from spring_core.errors import OptionError
from spring_core.parametric.online import ParametricDocument
from spring_core.types import GenerationSettings, PromptParts


@dataclass(frozen=True)
class Request:
    """One call: a finished ``prompt``, or a ``question`` with ``documents``, plus how to read them.

    Every field is checked when the request is made (``spring_core.options``), so a bad value raises an
    ``OptionError`` naming it before anything runs. ``k`` is the block size for a question with documents
    (``None``: all ``n`` tokens, 0 with ``knowledge="prag"``); a finished prompt carries its own. ``settings``
    are ``SpringModel.generate``'s (``max_new_tokens``, ``min_new_tokens``, ``temperature``, ``top_p``, ``seed``,
    ``stop``), given as a mapping and held as ``GenerationSettings``.
    """

    prompt: PromptParts | str | None = None
    question: str | None = None
    documents: Sequence[ParametricDocument] | None = None
    k: int | None = None
    decoding: str = "stuff"
    knowledge: str = "icl"
    missing_adapter: str = "error"
    weight_temperature: float = 1.0
    settings: Mapping[str, Any] | GenerationSettings = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prompt is not None and self.question is not None:
            raise OptionError("a Request holds a finished prompt or a question (with documents), not both")
        if not isinstance(self.settings, GenerationSettings):
            object.__setattr__(self, "settings", options.generation_settings(self.settings))
        if self.prompt is not None:  # a finished prompt: nothing else of the request applies to it
            object.__setattr__(self, "prompt", options.prompt(self.prompt))
            return
        object.__setattr__(self, "question", options.question(self.question))
        documents = [] if self.documents is None else options.items("documents", self.documents, "documents")
        for i, document in enumerate(documents):
            if not isinstance(document, ParametricDocument):
                raise OptionError(f"documents[{i}] must be a ParametricDocument, got {type(document).__name__}")
        options.passages([d.passage for d in documents])
        object.__setattr__(self, "documents", tuple(documents))
        if self.k is not None:
            options.integer("k", self.k, low=0)
        options.choice("decoding", self.decoding, options.DECODINGS)
        options.choice("knowledge", self.knowledge, options.KNOWLEDGE)
        options.choice("missing_adapter", self.missing_adapter, options.MISSING_ADAPTER)
        options.number("weight_temperature", self.weight_temperature, low=0.0, low_open=True)
