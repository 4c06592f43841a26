"""Hybrid retrieval: a dense and a BM25 store side by side, ranks merged by reciprocal rank fusion.

Dense embeddings catch paraphrases, BM25 catches rare names and numbers; fusing their rankings
(``score = sum 1 / (60 + rank)``, Cormack et al. 2009) beats either alone on SQuAD-style questions, whose
wording often repeats the passage's. The folder holds ``dense/`` and ``bm25/`` stores.

Example:
    >>> rows = [{"id": "harvard", "title": "Harvard University", "text": "Harvard was named after John Harvard."},
    ...         {"id": "yale", "title": "Yale University", "text": "Yale is a university in New Haven."}]
    >>> store = HybridStore.create("store/")         # a dense and a BM25 store, ranks fused
    >>> store.add(rows)
    2
    >>> [hit.id for hit in store.retrieve("Who founded Harvard?", top_k=2)]
    ['harvard', 'yale']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from spring_core import options
from spring_core.retrieval.base import (
    RetrievedPassage,
    StoreError,
    read_store_manifest,
    write_lock,
    write_store_manifest,
)
from spring_core.retrieval.bm25 import BM25Store
from spring_core.retrieval.dense import DenseStore
from spring_core.retrieval.embedders import canonical_embedder_name

RRF_OFFSET = 60
CANDIDATES_PER_K = 4  # each backend contributes its top 4k before fusion


class HybridStore:
    """A dense and a BM25 store over the same passages, queried together and fused by reciprocal rank."""

    backend = "hybrid"

    def __init__(self, folder: Path, dense: DenseStore, sparse: BM25Store):
        self.folder = folder
        self.dense = dense
        self.sparse = sparse
        self.embedder_name = dense.embedder_name

    @classmethod
    def create(cls, folder: str | Path, embedder: str | None = None) -> HybridStore:
        folder = Path(folder)
        if (folder / "store.json").exists():
            return cls.open(folder, embedder)
        with write_lock(folder):
            write_store_manifest(folder, "hybrid", embedder=canonical_embedder_name(embedder), fusion="rrf-60")
        return cls(folder, DenseStore.create(folder / "dense", embedder), BM25Store.create(folder / "bm25"))

    @classmethod
    def open(cls, folder: str | Path, embedder: str | None = None) -> HybridStore:
        folder = Path(folder)
        manifest = read_store_manifest(folder)
        if manifest["backend"] != "hybrid":
            raise StoreError(f"{folder} is a {manifest['backend']} store, not a hybrid one")
        return cls(folder, DenseStore.open(folder / "dense", embedder), BM25Store.open(folder / "bm25"))

    def __len__(self) -> int:
        return len(self.sparse)

    def add(self, rows: Sequence[dict[str, Any]], *, batch_size: int = 64,
            progress: Callable[[int], None] | None = None) -> int:
        """Add rows to both stores (each skips ids it already has); returns how many were new to the dense one.

        The hybrid folder's lock is held throughout, so a second writer is refused before it changes either half.
        """
        with write_lock(self.folder):
            added = self.dense.add(rows, batch_size=batch_size, progress=progress)
            self.sparse.add(rows)
        return added

    def delete(self, ids: Sequence[str]) -> None:
        with write_lock(self.folder):
            self.dense.delete(ids)
            self.sparse.delete(ids)

    def get(self, ids: Sequence[str]) -> list[RetrievedPassage]:
        return self.sparse.get(ids)

    def retrieve(self, query: str, top_k: int = 5) -> list[RetrievedPassage]:
        return self.retrieve_batch([query], top_k)[0]

    def retrieve_batch(self, queries: Sequence[str], top_k: int = 5) -> list[list[RetrievedPassage]]:
        """The ``top_k`` best passages per query by fused rank; ``score`` is the RRF score (higher is better)."""
        options.integer("top_k", top_k, low=1)
        depth = top_k * CANDIDATES_PER_K
        return [
            _fuse([dense, sparse], top_k)
            for dense, sparse in zip(self.dense.retrieve_batch(queries, depth),
                                     self.sparse.retrieve_batch(queries, depth), strict=True)
        ]


def _fuse(rankings: list[list[RetrievedPassage]], top_k: int) -> list[RetrievedPassage]:
    scores: dict[str, float] = {}
    passages: dict[str, RetrievedPassage] = {}
    for ranking in rankings:
        for rank, passage in enumerate(ranking, start=1):
            scores[passage.id] = scores.get(passage.id, 0.0) + 1.0 / (RRF_OFFSET + rank)
            passages.setdefault(passage.id, passage)
    best = sorted(scores, key=lambda pid: (-scores[pid], pid))[:top_k]
    return [replace(passages[pid], score=scores[pid]) for pid in best]
