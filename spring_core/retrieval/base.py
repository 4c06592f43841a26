"""What every retrieval backend shares: the passage type, the ``Retriever`` protocol, the store manifest, locking.

A store is a folder with ``store.json`` (backend, embedder, creation time) next to the backend's own files.
Writers hold an exclusive lock on ``DIR/.lock`` for the duration of a write, so two indexing processes can never
interleave; a second writer gets ``StoreLockedError`` at once instead of waiting or corrupting the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from spring_core.artifacts.manifest import atomic_write_bytes, read_json_object
from spring_core.errors import StoreError, StoreLockedError

STORE_MANIFEST = "store.json"
STORE_FORMAT_VERSION = 1
BACKENDS = ("dense", "bm25", "hybrid")


@dataclass(frozen=True)
class RetrievedPassage:
    """One retrieved passage: its id, title, text, the retriever's score (higher is better) and metadata."""

    id: str
    text: str
    title: str = ""
    score: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_passage(self) -> dict[str, str]:
        """The ``{"title", "text"}`` form that ``SpringModel.generate(passages=...)`` takes."""
        return {"title": self.title, "text": self.text}


@runtime_checkable
class Retriever(Protocol):
    """Anything that maps a query to ranked passages."""

    def retrieve(self, query: str, top_k: int = 5) -> list[RetrievedPassage]:
        """The ``top_k`` best passages for ``query``, best first."""
        ...


def passage_metadata(row: dict[str, Any]) -> dict[str, Any]:
    """The row's scalar fields other than id and text (chromadb keeps only str/int/float/bool values)."""
    return {
        key: value for key, value in row.items()
        if key not in ("id", "text") and isinstance(value, (str, int, float, bool)) and value is not None
    }


def new_ids_in_order(rows: Sequence[dict[str, Any]], existing: set[str]) -> list[dict[str, Any]]:
    """Rows whose id is not indexed yet (re-running an index command skips what is already there)."""
    return [row for row in rows if str(row["id"]) not in existing]


def write_store_manifest(folder: Path, backend: str, **fields: Any) -> dict[str, Any]:
    manifest = {
        "format_version": STORE_FORMAT_VERSION,
        "kind": "retrieval-store",
        "backend": backend,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }
    atomic_write_bytes(folder / STORE_MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def read_store_manifest(folder: Path) -> dict[str, Any]:
    path = folder / STORE_MANIFEST
    if folder.exists() and not folder.is_dir():
        raise StoreError(f"{folder} is a file, not a store folder; give the folder `spring-rag index` built")
    if not folder.is_dir():
        raise StoreError(
            f"store folder {folder} does not exist; build it with `spring-rag index CORPUS --store {folder}`"
        )
    if not path.is_file():
        raise StoreError(f"{folder} holds no {STORE_MANIFEST}; it is not a spring-rag retrieval store")
    manifest = read_json_object(path, StoreError, "rebuild the store")
    if manifest.get("backend") not in BACKENDS:
        raise StoreError(f"{path} names no known backend ({', '.join(BACKENDS)}); rebuild the store")
    if manifest.get("format_version") != STORE_FORMAT_VERSION:
        raise StoreError(f"{path} has format_version {manifest.get('format_version')!r}; rebuild the store")
    return manifest


@contextlib.contextmanager
def write_lock(folder: Path) -> Iterator[None]:
    """Hold the store's exclusive write lock, or raise ``StoreLockedError`` if another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreLockedError(
                f"{folder} is being written by another process (its .lock is held); wait for it to finish"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
