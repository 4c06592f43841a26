"""Answering with parametric knowledge: the retrieved documents' adapters, their text, or both, for one call.

Modes (the Parametric RAG paper's):

=============  ================================================================================================
``icl``        the passages in the prompt only (standard RAG; no adapter is touched)
``prag``       the documents' adapters only; the prompt holds just the question
``combine``    both; with SPRING tokens loaded and ``k > 0`` this is combine + SPRING
=============  ================================================================================================

A document without an adapter raises ``UnknownDocumentError`` unless ``missing_adapter="icl"``: then its passage goes
into the prompt instead (in every knowledge mode) and a warning is logged, so the fallback is never silent. A
DyPRAG translator (``DyPRAGAdapters``) has an adapter for every document with an id and a passage: ``plan_call``
hands it the call's documents (``prepare``) and it encodes the ones it has no adapter for when they are activated.

Example:
    >>> adapters = open_adapters("adapters/", sm.model)
    >>> docs = [ParametricDocument("doc-3", passage, 12.1), ParametricDocument("doc-9", other, 8.0)]
    >>> plan_call(adapters, docs, knowledge="combine", k=10).adapter_ids
    ['doc-3', 'doc-9']
    >>> call = plan_call(adapters, docs, knowledge="prag", k=None)    # the knowledge is in the adapters only
    >>> call.passages, call.k, call.adapter_ids
    ([], 0, ['doc-3', 'doc-9'])

``spring_core.engine`` answers with such a plan (``Engine``, ``answer_with_adapters``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spring_core import options
from spring_core.artifacts.registry import open_artifact
from spring_core.errors import OptionError, UnknownDocumentError
from spring_core.generation import optional_scores
from spring_core.types import Passage

logger = logging.getLogger("spring_rag.parametric")
MISSING_ADAPTER_WARNING = ("no adapter for document(s) %s: their passages go into the prompt instead "
                           "(missing_adapter='icl')")
"""What ``plan_call`` logs (on ``logger``) for documents read as text because they have no adapter."""


@dataclass(frozen=True)
class ParametricDocument:
    """A retrieved document: its adapter id (``None``: it has none), its passage, its retriever score, and what a
    DyPRAG translator reads to make its adapter when that is not the passage (``source``; LlamaIndex hands the
    prompt its node as LlamaIndex renders it, metadata lines included, and the translator the node's title and
    text, as ``parametrize --method dyprag --encode`` reads a corpus row)."""

    adapter_id: str | None
    passage: Passage
    score: float | None = None
    source: Passage | None = None


def open_adapters(folder: str | Path, model: Any, *, model_name: str | None = None) -> Any:
    """The adapters in ``folder`` for ``model``: a PRAG store (``DocumentAdapters``), Poly-PRAG experts, or a DyPRAG
    translator (``DyPRAGAdapters``: any retrieved document gets its adapter at query time)."""
    return open_artifact(folder, model, model_name=model_name,
                         kinds=("document-adapters", "poly-experts", "dyprag"))


def check_knowledge(knowledge: str, adapters: Any) -> None:
    """``OptionError`` for an unknown knowledge, or for ``prag``/``combine`` without adapters."""
    if options.choice("knowledge", knowledge, options.KNOWLEDGE) != "icl" and adapters is None:
        raise OptionError(f"knowledge {knowledge!r} needs adapters: pass adapters= (a folder from "
                          "`spring-rag parametrize`)")


@dataclass(frozen=True)
class ParametricCall:
    """What one call reads: the passages (and scores) for the prompt, ``k``, and the adapters to activate."""

    passages: list[Passage]
    scores: list[float | None]
    k: int | None
    adapter_ids: list[str]

    @property
    def weights(self) -> list[float] | None:
        """The prompt passages' retriever scores for marginal decoding (``optional_scores``: all or none)."""
        return optional_scores(self.scores) if self.passages else None


def plan_call(adapters: Any, documents: Sequence[ParametricDocument], *, knowledge: str, k: int | None,
              missing_adapter: str = "error") -> ParametricCall:
    """Split the documents between prompt and adapters as ``knowledge`` says (see the module docstring).

    ``k`` defaults to 0 in ``prag`` (no passages for the tokens to follow) and to ``None`` (all tokens) otherwise.
    """
    check_knowledge(knowledge, adapters)
    options.choice("missing_adapter", missing_adapter, options.MISSING_ADAPTER)
    prepare = getattr(adapters, "prepare", None)
    if knowledge != "icl" and prepare is not None:  # adapters made from the text at query time (DyPRAG)
        prepare(documents)
    with_adapter = [d for d in documents
                    if knowledge != "icl" and d.adapter_id is not None and d.adapter_id in adapters]
    without = [d for d in documents if d not in with_adapter]
    if knowledge != "icl" and without:
        unknown = [d.adapter_id for d in without]
        if missing_adapter == "error":
            raise UnknownDocumentError(f"no adapter for document(s) {unknown}; encode them with `spring-rag "
                                       "parametrize`, or pass missing_adapter='icl' to read their text instead")
        logger.warning(MISSING_ADAPTER_WARNING, unknown)
    in_prompt = list(documents) if knowledge in ("icl", "combine") else without
    if k is None and knowledge == "prag":
        k = 0
    return ParametricCall([d.passage for d in in_prompt], [d.score for d in in_prompt], k,
                          [str(d.adapter_id) for d in with_adapter])


@contextmanager
def activated(adapters: Any, adapter_ids: Sequence[str]) -> Iterator[None]:
    """``adapters.activate(adapter_ids)`` when there is anything to activate, else nothing at all."""
    if adapters is None or not adapter_ids:
        yield
        return
    with adapters.activate(list(adapter_ids)):
        yield
