"""AdapterStore: one indexed folder of per-document LoRA adapters (PRAG), checked on open, grown and shrunk in place.

Layout of a store folder::

    spring.json                      kind "document-adapters": base fingerprint, LoRA settings, file hashes
    index-<hash>.json                document id -> the shard that holds its tensors
    shards/shard-00000.safetensors   "<doc id>/<module>.lora_A" [r, in] and ".lora_B" [out, r], many documents

``add`` writes the new documents into a new shard (existing shards are never rewritten for an add) and a new
index; ``delete`` rewrites only the shards that held the deleted documents, under new names. Only then is the
manifest replaced, atomically, so a reader or a crash sees the store before or after a change, never half of
it. Opening checks the manifest, the fingerprint of the model when one is given, and the SHA-256 of every file,
so a truncated or corrupted shard is named instead of answering with quietly wrong weights. Several processes may
write one store (encoding that shards documents over processes): each change holds an exclusive lock on the
folder (``flock`` on the directory itself, so no lock file is left in it) and starts from the manifest the last
writer left, so no process drops another's documents
(``open_or_create`` makes the first one create the store).

Example:
    >>> spec = LoraSpec.for_model(model, rank=2, alpha=32)
    >>> store = AdapterStore.create("my-adapters/", model, spec, base_model_name="smollm2-135m")
    >>> store.add({"doc-1": tensors_1, "doc-2": tensors_2})
    >>> AdapterStore.open("my-adapters/", model=model).get("doc-1")[
    ...     "model.layers.0.mlp.up_proj.lora_A"].shape                    # [rank, hidden]
    torch.Size([2, 64])
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from spring_core.artifacts.manifest import (
    MANIFEST_NAME,
    artifact_bytes,
    atomic_write_bytes,
    check_fingerprint,
    new_manifest,
    read_json_object,
    read_manifest,
    sha256_file,
)
from spring_core.errors import ArtifactError, UnknownDocumentError

KIND = "document-adapters"
INDEX_PREFIX = "index-"
SHARD_DIR = "shards"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_TARGETS = ("gate_proj", "up_proj", "down_proj")
"""The MLP projections of the Llama family (Llama, Qwen, Mistral, Gemma, SmolLM); see ``mlp_targets``."""
MLP_TARGETS: dict[str, tuple[str, ...]] = {
    **{family: DEFAULT_TARGETS for family in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
                                              "gemma3", "gemma3_text", "smollm3", "granite", "olmo", "olmo2")},
    "phi3": ("gate_up_proj", "down_proj"),  # gate and up fused in one Linear
    "gpt2": ("mlp.c_fc", "mlp.c_proj"),  # Conv1D; attn.c_proj shares the leaf name, hence the "mlp." suffix
    "opt": ("fc1", "fc2"),
    "gpt_neox": ("dense_h_to_4h", "dense_4h_to_h"),
    "bloom": ("dense_h_to_4h", "dense_4h_to_h"),
    "falcon": ("dense_h_to_4h", "dense_4h_to_h"),
    "gptj": ("fc_in", "fc_out"),
}
"""PRAG's targets (the feed-forward projections) per ``config.model_type``."""


def mlp_targets(model: Any) -> tuple[str, ...]:
    """The feed-forward (MLP) projection names of ``model``'s architecture, e.g. ``("mlp.c_fc", "mlp.c_proj")``
    for GPT-2; an unknown architecture falls back to the Linear/Conv1D modules under a ``.mlp.`` block.

    Example:
        >>> mlp_targets(model)                                  # a Llama
        ('gate_proj', 'up_proj', 'down_proj')
    """
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    if model_type in MLP_TARGETS:
        return MLP_TARGETS[model_type]
    found = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if _linear_shape(module) is not None and ".mlp." in f".{name}"})
    if not found:
        raise ArtifactError(
            f"spring-rag does not know the MLP module names of the {model_type or type(model).__name__!r} "
            "architecture and found no Linear layer under an '.mlp.' block; pass targets= (the names of its "
            "feed-forward projections)"
        )
    return tuple(found)


def _linear_shape(module: torch.nn.Module) -> tuple[int, int] | None:
    """``(out, in)`` of a ``torch.nn.Linear`` or a transformers ``Conv1D`` (GPT-2's, weight ``[in, out]``)."""
    if isinstance(module, torch.nn.Linear):
        return int(module.out_features), int(module.in_features)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return int(module.nf), int(module.weight.shape[0])
    return None


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == target or name.endswith(f".{target}") for target in targets)


@dataclass(frozen=True)
class LoraSpec:
    """What every adapter of a store looks like: rank, alpha and the ``[out, in]`` shape of each target module.

    The update of one document on module ``m`` is ``(alpha / rank) * B @ A`` with ``A: [rank, in]`` and
    ``B: [out, rank]`` (peft's convention). ``dtype`` is how the tensors are stored; they are used in the model's.

    Example:
        >>> spec = LoraSpec.for_model(model, rank=2, alpha=32)
        >>> len(spec.modules), spec.scale                                    # SmolLM2: (90, 16.0), 30 layers
        (6, 16.0)
    """

    rank: int
    alpha: float
    modules: dict[str, tuple[int, int]] = field(default_factory=dict)
    dtype: str = "float32"

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def for_model(cls, model: Any, *, rank: int = 2, alpha: float = 32, targets: Sequence[str] | None = None,
                  dtype: str = "float32") -> LoraSpec:
        """The spec for every Linear (or GPT-2 Conv1D) of ``model`` whose name ends in one of ``targets``
        (a leaf name such as ``up_proj`` or a dotted suffix such as ``mlp.c_proj``); ``None`` or empty: the
        architecture's MLP projections (``mlp_targets``)."""
        targets = tuple(targets or ()) or mlp_targets(model)
        modules = {name: shape for name, module in model.named_modules()
                   if (shape := _linear_shape(module)) is not None and _matches(name, targets)}
        if not modules:
            raise ArtifactError(f"the model has no Linear module named {', '.join(targets)}; pick other targets "
                                f"(its MLP projections are {', '.join(mlp_targets(model))})")
        return cls(rank=rank, alpha=alpha, modules=modules, dtype=dtype)

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ArtifactError(f"LoRA rank must be >= 1 and alpha > 0, got rank {self.rank}, alpha {self.alpha}")
        if self.dtype not in DTYPES:
            raise ArtifactError(f"unknown storage dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")

    def check(self, doc_id: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Raise ``ArtifactError`` unless ``tensors`` hold exactly an ``A`` and a ``B`` of the right shape per
        module, all finite."""
        expected = {f"{name}.lora_{part}" for name in self.modules for part in "AB"}
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ArtifactError(f"adapter of {doc_id!r} does not fit the store: missing {missing[:3]}"
                                f"{'...' if len(missing) > 3 else ''}, unexpected {extra[:3]}")
        for name, (out_features, in_features) in self.modules.items():
            for part, shape in (("A", (self.rank, in_features)), ("B", (out_features, self.rank))):
                tensor = tensors[f"{name}.lora_{part}"]
                if tuple(tensor.shape) != shape:
                    raise ArtifactError(f"adapter of {doc_id!r}: {name}.lora_{part} has shape {tuple(tensor.shape)}, "
                                        f"the store needs {shape}")
                if not torch.isfinite(tensor).all():
                    raise ArtifactError(f"adapter of {doc_id!r}: {name}.lora_{part} holds NaN or inf values")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "modules": {name: list(shape) for name, shape in self.modules.items()}}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> LoraSpec:
        return cls(rank=int(value["rank"]), alpha=float(value["alpha"]), dtype=str(value["dtype"]),
                   modules={name: (int(shape[0]), int(shape[1])) for name, shape in value["modules"].items()})


class AdapterStore:
    """Per-document LoRA adapters in sharded safetensors with an index (see the module docstring).

    Thread-safe: reads share an LRU cache of loaded shards (``cache_shards``); writes are serialised.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], index: dict[str, str], *, cache_shards: int = 4):
        self.folder = folder
        self.manifest = manifest
        self.spec = LoraSpec.from_json(manifest["adapter"])
        self._index = index
        self._shards: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._cache_shards = cache_shards
        self._lock = threading.RLock()

    # ----- create / open -------------------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path | str, model: Any, spec: LoraSpec, *, base_model_name: str,
               **fields: Any) -> AdapterStore:
        """A new, empty store for ``model``; refuses a folder that already holds a store."""
        folder = Path(folder)
        if (folder / MANIFEST_NAME).exists():
            raise ArtifactError(f"{folder} already holds a store; open it with AdapterStore.open, or pick a new folder")
        manifest = new_manifest(KIND, base_model_name=base_model_name, model=model, adapter=spec.to_json(),
                                index=None, **fields)
        manifest["files"] = {}
        store = cls(folder, manifest, {})
        store._commit(drop=[], add={})
        return store

    @classmethod
    def open_or_create(cls, folder: Path | str, model: Any, spec: LoraSpec, *, base_model_name: str,
                       model_name: str = "this model", **fields: Any) -> AdapterStore:
        """The store in ``folder``, created first when there is none; safe when several processes do it at once.
        A folder without a store that holds other files is refused (nothing is written into it)."""
        folder = Path(folder)
        with _write_lock(folder):
            if (folder / MANIFEST_NAME).exists():
                return cls.open(folder, model, model_name=model_name)
            foreign = sorted(p.name for p in folder.iterdir())
            if foreign:
                raise ArtifactError(f"{folder} holds {', '.join(foreign[:3])} but no adapter store; choose a new "
                                    "folder (nothing was written)")
            return cls.create(folder, model, spec, base_model_name=base_model_name, **fields)

    @classmethod
    def open(cls, folder: Path | str, model: Any = None, *, model_name: str = "this model", verify: bool = True,
             cache_shards: int = 4) -> AdapterStore:
        """Open a store: checks the manifest, ``model``'s fingerprint (when given) and every file's SHA-256."""
        folder = Path(folder)
        manifest = read_manifest(folder, KIND)
        if model is not None:
            check_fingerprint(manifest, model, folder, model_name)
        if not isinstance(manifest.get("adapter"), dict):
            raise ArtifactError(f"{folder / MANIFEST_NAME} lacks the field 'adapter'; the manifest is damaged")
        listed = manifest["files"]
        index_name = manifest.get("index")
        if index_name not in listed:
            raise ArtifactError(f"{folder / MANIFEST_NAME} does not list its index file; the manifest is damaged")
        for name, entry in listed.items():
            path = folder / name
            if not path.is_file():
                raise ArtifactError(f"{path} is missing; the store folder is incomplete (copy it again)")
            if verify and sha256_file(path) != entry.get("sha256"):
                raise ArtifactError(f"{path} does not match the SHA-256 in {MANIFEST_NAME} (truncated or corrupted); "
                                    "copy the store again, or delete and re-encode the documents of that shard")
        index = read_json_object(folder / index_name, ArtifactError, "the store's index is damaged")
        unknown = sorted({shard for shard in index.values() if shard not in listed})
        if unknown:
            raise ArtifactError(f"{folder / index_name} points at shards the manifest does not list: {unknown}")
        return cls(folder, manifest, {str(k): str(v) for k, v in index.items()}, cache_shards=cache_shards)

    # ----- reading -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._index

    def shard_of(self, doc_id: str) -> str | None:
        """The file that holds ``doc_id``'s adapter (a replaced adapter is written to a new one), or ``None``."""
        with self._lock:
            return self._index.get(doc_id)

    def ids(self) -> list[str]:
        return list(self._index)

    def get(self, doc_id: str) -> dict[str, torch.Tensor]:
        """The adapter of ``doc_id``: ``{"<module>.lora_A": [r, in], "<module>.lora_B": [out, r]}`` as stored."""
        with self._lock:
            shard = self._index.get(doc_id)
            if shard is None:
                raise UnknownDocumentError(f"no adapter for document {doc_id!r} in {self.folder}; encode it with "
                                           "`spring-rag parametrize`, or answer from its text (knowledge='icl')")
            tensors = self._load_shard(shard)
        prefix = f"{doc_id}/"
        return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}

    def bytes_per_document(self) -> int:
        """Storage of one adapter in this store's dtype."""
        width = torch.finfo(DTYPES[self.spec.dtype]).bits // 8
        return width * self.spec.rank * sum(out + inp for out, inp in self.spec.modules.values())

    def total_bytes(self) -> int:
        """Bytes on disk: every file the manifest lists, plus the manifest."""
        return artifact_bytes(self.folder)

    def _load_shard(self, shard: str) -> dict[str, torch.Tensor]:
        if shard in self._shards:
            self._shards.move_to_end(shard)
            return self._shards[shard]
        path = self.folder / shard
        try:
            tensors = load(path.read_bytes())
        except (OSError, SafetensorError) as exc:
            raise ArtifactError(f"{path} cannot be read ({exc}); copy the store again") from exc
        self._shards[shard] = tensors
        while len(self._shards) > self._cache_shards:
            self._shards.popitem(last=False)
        return tensors

    # ----- writing -------------------------------------------------------------------------------------------

    def add(self, adapters: Mapping[str, Mapping[str, torch.Tensor]], *, replace: bool = False) -> None:
        """Store the adapters of new documents in one new shard; ids already present are refused unless
        ``replace`` (their old tensors are then dropped from their shards)."""
        if not adapters:
            return
        for doc_id, tensors in adapters.items():
            if not isinstance(doc_id, str) or not doc_id or "/" in doc_id:
                raise ArtifactError(f"document id {doc_id!r} must be a non-empty string without '/'")
            self.spec.check(doc_id, tensors)
        dtype = DTYPES[self.spec.dtype]
        packed = {f"{doc_id}/{key}": value.detach().to("cpu", dtype).contiguous()
                  for doc_id, tensors in adapters.items() for key, value in tensors.items()}
        with self._lock, _write_lock(self.folder):
            self._reload()
            present = sorted(set(adapters) & set(self._index))
            if present and not replace:
                raise ArtifactError(f"{len(present)} document(s) already have adapters (e.g. {present[0]!r}); "
                                    "pass replace=True to overwrite them, or delete them first")
            self._commit(drop=present, add=packed)

    def delete(self, doc_ids: Iterable[str]) -> None:
        """Drop documents; the shards that held them are rewritten without them (or removed when empty)."""
        doc_ids = list(dict.fromkeys(doc_ids))
        with self._lock, _write_lock(self.folder):
            self._reload()
            unknown = [d for d in doc_ids if d not in self._index]
            if unknown:
                raise UnknownDocumentError(f"cannot delete {unknown[0]!r}: it is not in {self.folder}")
            self._commit(drop=doc_ids, add={})

    def _reload(self) -> None:
        """Start from the manifest and index on disk when another writer (process) changed them since."""
        manifest = read_manifest(self.folder, KIND)
        if manifest.get("index") == self.manifest.get("index"):
            return
        index = read_json_object(self.folder / manifest["index"], ArtifactError, "the store's index is damaged")
        self.manifest, self._index = manifest, {str(k): str(v) for k, v in index.items()}

    def _commit(self, *, drop: Sequence[str], add: dict[str, torch.Tensor]) -> None:
        """Write new shard and index files under new names, then the manifest that points at them (the one atomic
        switch), then remove the files it no longer lists. A crash before the switch leaves the old store whole."""
        gone = set(drop)
        index = {doc_id: shard for doc_id, shard in self._index.items() if doc_id not in gone}
        retired = sorted({self._index[doc_id] for doc_id in drop})
        fresh: dict[str, dict[str, torch.Tensor]] = {}
        for shard in retired:  # the documents that stay move to a rewritten shard
            kept = {k: v for k, v in self._load_shard(shard).items() if k.split("/", 1)[0] not in gone}
            if kept:
                fresh[self._new_shard_name(len(fresh))] = kept
        if add:
            fresh[self._new_shard_name(len(fresh))] = add
        files = {name: entry for name, entry in self.manifest["files"].items()
                 if name not in retired and name != self.manifest["index"]}
        for name, tensors in fresh.items():
            data = save(tensors)
            atomic_write_bytes(self.folder / name, data)
            files[name] = {"sha256": _sha256(data), "bytes": len(data)}
            index.update({key.split("/", 1)[0]: name for key in tensors})
        index_bytes = (json.dumps(dict(sorted(index.items())), indent=1) + "\n").encode()
        index_name = f"{INDEX_PREFIX}{_sha256(index_bytes)[:16]}.json"
        atomic_write_bytes(self.folder / index_name, index_bytes)
        files[index_name] = {"sha256": _sha256(index_bytes), "bytes": len(index_bytes)}
        old_files = set(self.manifest["files"])
        manifest = {**self.manifest, "files": files, "index": index_name, "documents": len(index)}
        atomic_write_bytes(self.folder / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
        self.manifest, self._index = manifest, index
        for name in retired:
            self._shards.pop(name, None)
        for name in old_files - set(files):
            (self.folder / name).unlink(missing_ok=True)

    def _new_shard_name(self, offset: int) -> str:
        numbers = [int(Path(name).stem.rsplit("-", 1)[-1]) for name in self.manifest["files"]
                   if name.startswith(SHARD_DIR + "/")]
        return f"{SHARD_DIR}/shard-{max(numbers, default=-1) + 1 + offset:05d}.safetensors"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _write_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the directory ``folder`` (waiting while another process holds it)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing the descriptor releases the lock

