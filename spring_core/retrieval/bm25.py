"""Sparse retrieval with BM25 (``bm25s``), saved to and loaded from a folder.

The folder keeps every passage in ``passages.jsonl`` and the BM25 index in ``index/``. A BM25 index is static, so
``add`` and ``delete`` rebuild it over all passages (seconds for tens of thousands) and swap it in atomically.

Example:
    >>> rows = [{"id": "harvard", "title": "Harvard University", "text": "Harvard was named after John Harvard."},
    ...         {"id": "yale", "title": "Yale University", "text": "Yale is a university in New Haven."}]
    >>> store = BM25Store.create("bm25-store/")
    >>> store.add(rows)                              # or read_corpus("corpus.jsonl"); returns how many were new
    2
    >>> BM25Store.open("bm25-store/").retrieve("Who is Harvard named after?", top_k=1)[0].id
    'harvard'
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spring_core import options
from spring_core.artifacts.manifest import atomic_write_bytes
from spring_core.data import iter_jsonl
from spring_core.retrieval.base import (
    STORE_MANIFEST,
    RetrievedPassage,
    StoreError,
    StoreLockedError,
    new_ids_in_order,
    passage_metadata,
    read_store_manifest,
    write_lock,
    write_store_manifest,
)

PASSAGES_FILE = "passages.jsonl"
INDEX_DIR = "index"
STAGING_PREFIX = ".index.tmp-"
OLD_PREFIX = ".index.old-"


class BM25Store:
    """Passages ranked by BM25 over lower-cased word tokens with English stop words removed."""

    backend = "bm25"
    embedder_name = None

    def __init__(self, folder: Path, rows: list[dict[str, Any]], index: Any):
        self.folder = folder
        self._rows = rows
        self._index = index

    @classmethod
    def create(cls, folder: str | Path) -> BM25Store:
        """Open the store in ``folder``, creating an empty one if needed."""
        folder = Path(folder)
        if not (folder / STORE_MANIFEST).exists():
            with write_lock(folder):
                if not (folder / STORE_MANIFEST).exists():  # another process may have created it meanwhile
                    write_store_manifest(folder, "bm25", tokenizer="bm25s-en-stopwords")
                    atomic_write_bytes(folder / PASSAGES_FILE, b"")
        return cls.open(folder)

    @classmethod
    def open(cls, folder: str | Path) -> BM25Store:
        folder = Path(folder)
        manifest = read_store_manifest(folder)
        if manifest["backend"] != "bm25":
            raise StoreError(f"{folder} is a {manifest['backend']} store, not a bm25 one")
        _remove_stale_staging(folder)
        rows = _read_passages(folder)
        store = cls(folder, rows, None)
        if rows:
            import bm25s

            index_dir = folder / INDEX_DIR
            if index_dir.is_dir():
                with contextlib.suppress(OSError, ValueError):  # a half-swapped index is rebuilt below
                    store._index = bm25s.BM25.load(str(index_dir))
            if store._index is None or store._index.scores.get("num_docs") != len(rows):
                # passages.jsonl is the source of truth: a write cut short between it and the index is repaired
                # on disk, or only in memory while another process is writing.
                try:
                    with write_lock(folder):
                        store._rewrite(_read_passages(folder))
                except StoreLockedError:
                    store._index = _build_index(rows)
        return store

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, rows: Sequence[dict[str, Any]], *, batch_size: int = 1000,
            progress: Callable[[int], None] | None = None) -> int:
        """Add corpus rows whose id is not in the store yet and rebuild the index; returns how many were added.

        The passages on disk are read again inside the write lock, so what another writer added since this
        store was opened is kept (a second writer at the same moment gets ``StoreLockedError``)."""
        with write_lock(self.folder):
            current = _read_passages(self.folder)
            existing = {str(r["id"]) for r in current}
            fresh = [{**r, "id": str(r["id"])} for r in new_ids_in_order(rows, existing)]
            if fresh:
                self._rewrite(current + [{"id": r["id"], "text": r["text"], **passage_metadata(r)} for r in fresh])
            elif current != self._rows:  # nothing new here, but another writer changed the store: catch up
                self._rows, self._index = current, _build_index(current) if current else None
        if progress is not None:
            progress(len(rows))
        return len(fresh)

    def delete(self, ids: Sequence[str]) -> None:
        doomed = {str(i) for i in ids}
        with write_lock(self.folder):
            self._rewrite([r for r in _read_passages(self.folder) if r["id"] not in doomed])

    def retrieve(self, query: str, top_k: int = 5) -> list[RetrievedPassage]:
        return self.retrieve_batch([query], top_k)[0]

    def retrieve_batch(self, queries: Sequence[str], top_k: int = 5) -> list[list[RetrievedPassage]]:
        options.integer("top_k", top_k, low=1)
        if not queries or self._index is None:
            return [[] for _ in queries]
        import bm25s

        tokens = bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
        documents, scores = self._index.retrieve(tokens, k=min(top_k, len(self._rows)), show_progress=False)
        return [
            [self._passage(int(doc), float(score)) for doc, score in zip(docs, row_scores, strict=True)]
            for docs, row_scores in zip(documents, scores, strict=True)
        ]

    def get(self, ids: Sequence[str]) -> list[RetrievedPassage]:
        by_id = {r["id"]: position for position, r in enumerate(self._rows)}
        missing = [str(i) for i in ids if str(i) not in by_id]
        if missing:
            raise StoreError(f"unknown passage id(s): {', '.join(missing[:5])}")
        return [self._passage(by_id[str(i)], 0.0) for i in ids]

    def _passage(self, position: int, score: float) -> RetrievedPassage:
        row = dict(self._rows[position])
        pid, text, title = row.pop("id"), row.pop("text"), str(row.pop("title", "") or "")
        return RetrievedPassage(id=pid, text=text, title=title, score=score, metadata=row)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` and their index (the caller holds the write lock)."""
        index = None
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.folder))
        try:
            if rows:
                index = _build_index(rows)
                try:
                    index.save(str(staging))
                except OSError as exc:  # numpy's tofile reports a short write ("N requested and M written") with
                    if exc.errno is not None:  # no errno: the file system had no room for the rest
                        raise
                    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({exc})", str(staging)) from exc
            # passages.jsonl first: it is the source of truth, and `open` rebuilds an index that lags behind.
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            atomic_write_bytes(self.folder / PASSAGES_FILE, lines.encode())
            old = self.folder / f"{OLD_PREFIX}{os.getpid()}"
            if (self.folder / INDEX_DIR).exists():
                os.replace(self.folder / INDEX_DIR, old)
            os.replace(staging, self.folder / INDEX_DIR)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._rows, self._index = rows, index


def _build_index(rows: list[dict[str, Any]]) -> Any:
    import bm25s

    index = bm25s.BM25()
    texts = [f"{r.get('title', '')}\n{r['text']}" for r in rows]
    index.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    return index


def _read_passages(folder: Path) -> list[dict[str, Any]]:
    path = folder / PASSAGES_FILE
    return [row for _, row in iter_jsonl(path)] if path.exists() else []


def _remove_stale_staging(folder: Path) -> None:
    """Delete the staging folders and temp files a killed writer left behind, unless a writer is at work now."""
    stale = [p for p in folder.iterdir() if p.name.startswith((STAGING_PREFIX, OLD_PREFIX))
             or (p.name.startswith(f".{PASSAGES_FILE}.") and p.name.endswith(".tmp"))]  # atomic_write_bytes' temp
    if not stale:
        return
    with contextlib.suppress(StoreLockedError), write_lock(folder):
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
