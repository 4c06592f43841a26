"""Training data: QA files mixed with weights, passages from the rows or from a retriever, a seeded epoch order.

Everything random about an example (which rows an epoch reads, in what order, how many passages, their order)
is derived from ``(seed, epoch, position)``, so a resumed run reads exactly what an uninterrupted one would.

Example:
    >>> sources = load_sources(["train.jsonl:1", "extra.jsonl:0.5"])   # 12 QA rows each
    >>> plan = EpochPlan(sources, seed=42)
    >>> plan.size               # every row of train.jsonl, a random half of extra.jsonl's
    18
    >>> plan.epoch(0)[:3]       # (source index, row index) pairs, the same for the same seed and epoch
    [(0, 7), (1, 10), (0, 4)]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spring_core.data import read_qa
from spring_core.errors import DataError
from spring_core.retrieval import Store, index_corpus, open_store

MAX_WEIGHT = 1000.0
"""Largest ``FILE:WEIGHT`` weight (reads per epoch); ``inf`` or 1e300 would overflow the epoch plan."""


@dataclass
class DataSource:
    """One QA file, its validated rows and how often an epoch reads it (2 = twice, 0.5 = a random half)."""

    path: Path
    weight: float
    rows: list[dict[str, Any]]

    def describe(self) -> dict[str, Any]:
        """What the artifact's manifest records: the file name, its SHA-256, row count and weight."""
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return {"file": self.path.name, "sha256": digest, "rows": len(self.rows), "weight": self.weight}


def parse_source_spec(spec: str) -> tuple[Path, float]:
    """``"file.jsonl"`` -> weight 1; ``"file.jsonl:0.5"`` -> weight 0.5."""
    path, _, weight_text = spec.rpartition(":")
    if path and weight_text:
        try:
            weight = float(weight_text)
        except ValueError:
            return Path(spec), 1.0
        if not 0 < weight <= MAX_WEIGHT:
            raise DataError(f"{spec}: the weight after ':' must be a positive number of at most {MAX_WEIGHT:g}, "
                            f"got {weight_text}")
        return Path(path), weight
    return Path(spec), 1.0


def load_sources(specs: Sequence[str]) -> list[DataSource]:
    """Read and validate every file (errors name file:line) before any training starts."""
    sources = []
    for spec in specs:
        path, weight = parse_source_spec(spec)
        sources.append(DataSource(path, weight, read_qa(path)))
    return sources


def open_retriever(*, corpus: str | None, store: str | None, backend: str, cache_dir: Path) -> Store | None:
    """The store passages are retrieved from: ``store`` as it is, or one built from ``corpus`` in ``cache_dir``."""
    if store:
        return open_store(store)
    if corpus:
        # index_corpus skips ids already indexed, so a store cut short by a killed run is completed here.
        store_found, _ = index_corpus(corpus, cache_dir / f"retrieval-{backend}", backend=backend, show_progress=False)
        return store_found
    return None


def attach_retrieved(sources: Sequence[DataSource], retriever: Store, top_k: int, batch_size: int = 256) -> None:
    """Replace every row's passages by the ``top_k`` best retrieved for its question (best first), with their
    retriever scores in ``passage_scores`` and their corpus ids in ``passage_ids`` (the adapter ids of the
    knowledge modes)."""
    for source in sources:
        for start in range(0, len(source.rows), batch_size):
            chunk = source.rows[start:start + batch_size]
            hits = retriever.retrieve_batch([row["question"] for row in chunk], top_k)
            for row, row_hits in zip(chunk, hits, strict=True):
                row["passages"] = [hit.as_passage() for hit in row_hits]
                row["passage_scores"] = [hit.score for hit in row_hits]
                row["passage_ids"] = [hit.id for hit in row_hits]


def require_passages(sources: Sequence[DataSource]) -> None:
    """Every training row needs passages (its own or retrieved): say which row lacks them, never skip it."""
    for source in sources:
        for row in source.rows:
            if not row.get("passages"):
                raise DataError(
                    f"{source.path}: row {row['id']!r} has no passages; add them to the file or pass --corpus/--store "
                    "to retrieve passages for every question"
                )


class EpochPlan:
    """The seeded order in which one epoch reads the (weighted) rows of all sources."""

    def __init__(self, sources: Sequence[DataSource], seed: int):
        self.sources = list(sources)
        self.seed = seed
        self.size = sum(math.floor(s.weight) * len(s.rows) + round((s.weight % 1) * len(s.rows)) for s in sources)
        if self.size == 0:
            raise DataError("the data weights select no rows; raise a weight")
        self._cached: tuple[int, list[tuple[int, int]]] | None = None

    def epoch(self, epoch: int) -> list[tuple[int, int]]:
        """``(source index, row index)`` pairs in the order epoch ``epoch`` reads them (the last one is cached,
        since every step of an epoch asks for it)."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._order(epoch))
        return self._cached[1]

    def _order(self, epoch: int) -> list[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order: list[tuple[int, int]] = []
        for index, source in enumerate(self.sources):
            whole, part = math.floor(source.weight), source.weight % 1
            order += [(index, row) for _ in range(whole) for row in range(len(source.rows))]
            extra = rng.choice(len(source.rows), size=round(part * len(source.rows)), replace=False)
            order += [(index, int(row)) for row in sorted(extra)]
        permutation = rng.permutation(len(order))
        return [order[i] for i in permutation]

    def row(self, pair: tuple[int, int]) -> dict[str, Any]:
        return self.sources[pair[0]].rows[pair[1]]


def sample_passages(passages: Sequence[Any], *, min_count: int, max_count: int,
                    rng: np.random.Generator) -> list[Any]:
    """The paper's recipe: keep the ``m`` best passages, ``m`` uniform in [min, max] (capped), shuffled."""
    upper = min(max_count, len(passages))
    lower = min(min_count, upper)
    m = int(rng.integers(lower, upper + 1))
    kept = list(passages[:m])
    return [kept[i] for i in rng.permutation(m)]
