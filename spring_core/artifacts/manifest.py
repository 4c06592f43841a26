"""Artifact folders: the ``spring.json`` manifest, the base-model fingerprint, atomic writes, validation.

An artifact is a folder: ``spring.json`` describes it (kind, base model, fingerprint, layout, training config,
metrics, library versions) and lists its data files with their SHA-256, so a truncated or corrupted file is
caught on load instead of producing quietly wrong answers.

Example:
    >>> import torch
    >>> fingerprint(torch.arange(12.0).reshape(3, 4))     # a model's input embedding weight, in practice
    {'shape': [3, 4], 'sample_sha256': '29e1889124dc651e'}
    >>> from spring_core.model.tokens import bundled_tokens_path
    >>> read_manifest(bundled_tokens_path())["kind"]      # validated against the schema on the way in
    'virtual-tokens'
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from spring_core.errors import ArtifactError, ModelMismatchError, SpringError

MANIFEST_NAME = "spring.json"
FORMAT_VERSION = 1
KINDS = ("virtual-tokens", "lora-adapter", "prefix-adapter", "document-adapters", "poly-experts", "dyprag")
_FINGERPRINT_ROWS = 64


def fingerprint(embedding: torch.Tensor) -> dict[str, Any]:
    """Identify a base model by its input embedding: the shape plus a hash of a fixed sample of rows.

    Rows are rounded to bfloat16 before hashing, so the same model loaded in float32 or bfloat16 matches.
    """
    rows, dim = embedding.shape
    index = torch.linspace(0, rows - 1, steps=min(_FINGERPRINT_ROWS, rows)).long()
    sample = embedding.detach()[index.to(embedding.device)].to("cpu", torch.bfloat16).to(torch.float32)
    digest = hashlib.sha256(sample.contiguous().numpy().tobytes()).hexdigest()[:16]
    return {"shape": [int(rows), int(dim)], "sample_sha256": digest}


def model_fingerprint(model: Any) -> dict[str, Any]:
    return fingerprint(model.get_input_embeddings().weight)


def check_fingerprint(manifest: dict[str, Any], model: Any, where: Path | str, model_name: str) -> None:
    """Raise ``ModelMismatchError`` naming both models when the artifact was made for another base model."""
    recorded = manifest["base_model"]
    actual = model_fingerprint(model)
    if recorded.get("fingerprint") == actual:
        return
    expected_name = recorded.get("name", "an unnamed model")
    raise ModelMismatchError(
        f"{where} was made for {expected_name!r} (embedding {recorded['fingerprint']['shape']}, fingerprint "
        f"{recorded['fingerprint']['sample_sha256']}) but is being loaded into {model_name!r} (embedding "
        f"{actual['shape']}, fingerprint {actual['sample_sha256']}). Load it with the model it was trained for, "
        "or train an artifact for this model."
    )


def library_versions() -> dict[str, str]:
    versions = {}
    for name in ("spring-rag", "torch", "transformers", "safetensors", "accelerate", "peft"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def new_manifest(kind: str, *, base_model_name: str, model: Any, **fields: Any) -> dict[str, Any]:
    """A manifest with the fields every artifact carries; ``fields`` adds the kind-specific ones."""
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    embedding = model.get_input_embeddings()
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "base_model": {
            "name": base_model_name,
            # The width of what the embedding module outputs, which a token table must match: OPT-350m's is
            # 512 while its config.hidden_size is 1024.
            "hidden_size": int(getattr(embedding, "embedding_dim", None) or embedding.weight.shape[1]),
            "vocab_size": int(model.get_input_embeddings().weight.shape[0]),
            "fingerprint": model_fingerprint(model),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "library_versions": library_versions(),
        **fields,
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_artifact(folder: Path | str, manifest: dict[str, Any], files: dict[str, bytes]) -> Path:
    """Write data files, then the manifest that lists their hashes, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = dict(manifest)
    manifest["files"] = {}
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    atomic_write_bytes(folder / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())
    return folder


def read_json_object(path: Path, error: type[SpringError], remedy: str) -> dict[str, Any]:
    """A JSON file that must hold an object; anything else raises ``error`` naming the file and ``remedy``."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # ValueError: bad JSON or a 5000-digit number
        raise error(f"{path} is not valid JSON ({str(exc)[:120]}); {remedy}") from exc
    if not isinstance(value, dict):
        raise error(f"{path} must hold a JSON object, not {type(value).__name__}; {remedy}")
    return value


def read_manifest(folder: Path | str, kind: str | None = None) -> dict[str, Any]:
    """Read and check ``spring.json``: valid JSON, known format version, the expected kind (any known kind when
    ``kind`` is None), required fields."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"{folder} is a file, not an artifact folder; give the folder a spring-rag command wrote")
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder {folder} does not exist")
    if not path.is_file():
        raise ArtifactError(f"{folder} holds no {MANIFEST_NAME}; it is not a spring-rag artifact folder")
    manifest = read_json_object(path, ArtifactError, "restore it from the original artifact")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {version!r}; this spring-rag reads version {FORMAT_VERSION}. "
            "Upgrade spring-rag or re-export the artifact."
        )
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(f"{path} describes a {manifest.get('kind')!r} artifact, but a {kind!r} one is needed")
    if manifest.get("kind") not in KINDS:
        raise ArtifactError(f"{path} describes a {manifest.get('kind')!r} artifact; known kinds: {', '.join(KINDS)}")
    missing = [key for key in ("base_model", "files") if not isinstance(manifest.get(key), dict)]
    base = manifest.get("base_model") or {}
    if not isinstance(base, dict) or not isinstance(base.get("fingerprint"), dict):
        missing.append("base_model.fingerprint")
    if missing:
        raise ArtifactError(f"{path} lacks the field(s) {', '.join(sorted(set(missing)))}; the manifest is damaged")
    _check_base_model(manifest["base_model"], path)
    _check_files(manifest["files"], path)
    return manifest


def schema_error(path: Path | str, field: str, expected: str, value: Any) -> ArtifactError:
    """The error for a manifest field of the wrong type or range: file, field, what was expected, what was found."""
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ArtifactError(f"{path}: field {field} must be {expected}, got {shown}; the manifest is damaged — copy "
                         "the artifact folder again")


def positive_int(value: Any) -> bool:
    """A JSON integer >= 1 (``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_base_model(base: dict[str, Any], path: Path) -> None:
    """Types, ranges and consistency: the fingerprint's shape is [vocab_size, hidden_size]."""
    if not isinstance(base.get("name", ""), str):
        raise schema_error(path, "base_model.name", "a string", base.get("name"))
    for key in ("hidden_size", "vocab_size"):
        if not positive_int(base.get(key)):
            raise schema_error(path, f"base_model.{key}", "a positive integer", base.get(key))
    fp = base["fingerprint"]
    shape = fp.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(positive_int(v) for v in shape)):
        raise schema_error(path, "base_model.fingerprint.shape", "[rows, width] of positive integers", shape)
    digest = fp.get("sample_sha256")
    if not (isinstance(digest, str) and len(digest) == 16 and all(c in "0123456789abcdef" for c in digest)):
        raise schema_error(path, "base_model.fingerprint.sample_sha256", "16 hex digits", digest)
    if shape != [base["vocab_size"], base["hidden_size"]]:
        raise ArtifactError(
            f"{path}: base_model says vocab_size {base['vocab_size']} and hidden_size {base['hidden_size']}, but its "
            f"fingerprint is of a {shape} embedding; the manifest is inconsistent — copy the artifact folder again"
        )


def _check_files(files: dict[str, Any], path: Path) -> None:
    """Every entry: a relative name inside the folder, a SHA-256 of 64 hex digits, a byte count."""
    for name, entry in files.items():
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts:
            raise schema_error(path, "files", "names of files inside the artifact folder", name)
        if not isinstance(entry, dict):
            raise schema_error(path, f"files[{name!r}]", 'an object {"sha256", "bytes"}', entry)
        digest = entry.get("sha256")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise schema_error(path, f"files[{name!r}].sha256", "64 hex digits", digest)
        size = entry.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise schema_error(path, f"files[{name!r}].bytes", "a byte count", size)


def artifact_bytes(folder: Path | str) -> int:
    """Bytes on disk of an artifact: every data file its manifest lists, plus the manifest."""
    folder = Path(folder)
    listed = read_manifest(folder)["files"].values()
    return sum(int(entry["bytes"]) for entry in listed) + (folder / MANIFEST_NAME).stat().st_size


def verified_file(folder: Path | str, manifest: dict[str, Any], name: str) -> Path:
    """The path of data file ``name`` after checking it exists and matches the hash in the manifest."""
    path = Path(folder) / name
    entry = manifest["files"].get(name)
    if entry is None:
        raise ArtifactError(f"{Path(folder) / MANIFEST_NAME} does not list {name}; the manifest is damaged")
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; the artifact folder is incomplete")
    if sha256_file(path) != entry.get("sha256"):
        raise ArtifactError(
            f"{path} does not match the SHA-256 in {MANIFEST_NAME} (truncated or corrupted); "
            "copy the artifact folder again"
        )
    return path
