"""Retrieval: one ``Retriever`` protocol over dense (sentence-transformers + chromadb), BM25 and hybrid stores.

Example:
    >>> from spring_core.data import sample_corpus_path
    >>> from spring_core.retrieval import index_corpus, open_store
    >>> store, added = index_corpus(sample_corpus_path(), "store/", backend="bm25", show_progress=False)
    >>> added                        # the 222 bundled SQuAD paragraphs; running it again adds none
    222
    >>> [hit.title for hit in open_store("store/").retrieve("Who is Harvard named after?", top_k=2)]
    ['Harvard University', 'Harvard University']
"""

from __future__ import annotations

from pathlib import Path

from spring_core.data import read_corpus
from spring_core.retrieval.base import (
    BACKENDS,
    RetrievedPassage,
    Retriever,
    StoreError,
    StoreLockedError,
    read_store_manifest,
)
from spring_core.retrieval.bm25 import BM25Store
from spring_core.retrieval.dense import DenseStore
from spring_core.retrieval.embedders import DEFAULT_EMBEDDER
from spring_core.retrieval.hybrid import HybridStore

Store = DenseStore | BM25Store | HybridStore

__all__ = [
    "BACKENDS",
    "DEFAULT_EMBEDDER",
    "BM25Store",
    "DenseStore",
    "HybridStore",
    "RetrievedPassage",
    "Retriever",
    "Store",
    "StoreError",
    "StoreLockedError",
    "create_store",
    "index_corpus",
    "open_store",
]


def open_store(folder: str | Path, embedder: str | None = None) -> Store:
    """Open an existing store of either backend (``embedder`` must match a dense store's, if given)."""
    manifest = read_store_manifest(Path(folder))
    if manifest["backend"] == "bm25":
        if embedder:
            raise StoreError(f"{folder} is a BM25 store: it uses no embedder, so drop --embedder {embedder}")
        return BM25Store.open(folder)
    if manifest["backend"] == "hybrid":
        return HybridStore.open(folder, embedder)
    return DenseStore.open(folder, embedder)


def create_store(folder: str | Path, backend: str = "dense", embedder: str | None = None) -> Store:
    """Open ``folder``'s store, creating it with ``backend`` if it does not exist yet."""
    if backend not in BACKENDS:
        raise StoreError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if (Path(folder) / "store.json").exists():
        found = read_store_manifest(Path(folder))["backend"]
        if found != backend:  # checked before opening, so nothing in the folder is touched
            raise StoreError(f"{folder} already holds a {found} store; use --backend {found}, or choose another "
                             "folder (nothing was changed)")
        return open_store(folder, None if backend == "bm25" else embedder)
    if Path(folder).is_dir() and any(Path(folder).iterdir()):
        raise StoreError(f"{folder} already holds files but no store.json, so it is not a retrieval store; choose a "
                         "new or empty folder (nothing was changed)")
    if backend == "bm25":
        return BM25Store.create(folder)
    if backend == "hybrid":
        return HybridStore.create(folder, embedder)
    return DenseStore.create(folder, embedder)


def index_corpus(corpus: str | Path, folder: str | Path, *, backend: str = "dense", embedder: str | None = None,
                 batch_size: int = 64, show_progress: bool = True) -> tuple[Store, int]:
    """Validate a corpus JSONL file, then add its passages to the store (skipping ids already indexed).

    Returns the store and how many passages were added.
    """
    rows = read_corpus(corpus)
    store = create_store(folder, backend, embedder)
    from tqdm.auto import tqdm

    with tqdm(total=len(rows), desc=f"indexing ({backend})", unit="passage", disable=not show_progress) as bar:
        added = store.add(rows, batch_size=batch_size, progress=bar.update)
    return store, added
