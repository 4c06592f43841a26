"""DyPRAG: a parameter translator that turns a document into its PRAG adapter in one forward pass, no training.

PRAG trains one LoRA per document offline. DyPRAG (Tan et al., 2025) trains a small *translator* once, on PRAG's
adapters, and then reads any document's adapter off the frozen model's hidden state:

1. the document state ``s``: the base model's last-layer hidden state at the document's last token, ``[hidden]``;
2. one head per target module (per ``(module, layer)``): its input is ``concat(s, layer_index)``; two bias-free
   2-layer ReLU MLPs of hidden width ``p`` emit ``A`` (``r x in``) and ``B`` (``out x r``);
3. the update is PRAG's, ``(alpha / r) * B @ A`` (see ``DyPRAGConfig`` for why the scale is kept).

``DyPRAG.encode(document)`` returns the adapter exactly as an ``AdapterStore`` holds it
(``{"<module>.lora_A": [r, in], "<module>.lora_B": [out, r]}``, float32), so the store, ``LoraUpdate.sum``, the
hooks and every knowledge mode take it unchanged. ``DyPRAGAdapters`` is the adapter set the knowledge modes use:
a document the optional PRAG store holds uses its stored adapter, any other gets one from the translator when it
is first retrieved, cached by document id (a bounded cache owned by the adapter set).

The artifact folder (kind ``dyprag``) holds ``translator.safetensors``, the tokenizer the translator reads
documents with (``tokenizer/``, so every process tokenizes a document the same way) and ``spring.json`` with the
config, the base model's fingerprint, the training settings and the scores measured after training.

Example:
    >>> spec = LoraSpec.for_model(model, rank=2, alpha=32)                 # PRAG's: rank 2, alpha 32, MLP projections
    >>> dyprag = DyPRAG(ParameterTranslator(DyPRAGConfig.for_model(model, spec, width=8)), model, tokenizer)
    >>> adapter = dyprag.encode({"title": "Harvard", "text": "Harvard is named after John Harvard."})
    >>> adapter["model.layers.0.mlp.up_proj.lora_A"].shape               # [rank, in], as the PRAG store holds it
    torch.Size([2, 64])
    >>> _ = dyprag.save("translator/", base_model_name="tiny-llama")     # (untrained here: spring_train.dyprag)
    >>> adapters = DyPRAGAdapters.open("translator/", model)              # also open_artifact / open_adapters
    >>> adapters.remember("harvard", "Harvard is named after John Harvard.")
    >>> input_ids = torch.tensor([tokenizer(question)["input_ids"]])
    >>> with adapters.activate(["harvard"]) as update:                   # encoded now, cached by id
    ...     logits = model(input_ids).logits
    >>> update.rank, "harvard" in adapters
    (2, True)
    >>> adapters.close()
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from spring_core import options
from spring_core.artifacts.manifest import check_fingerprint, new_manifest, read_manifest, verified_file, write_artifact
from spring_core.errors import ArtifactError, OptionError, UnknownDocumentError
from spring_core.parametric.hooks import AdapterHooks
from spring_core.parametric.lora import CachedAdapters, LoraUpdate, merge_adapters
from spring_core.parametric.store import DTYPES, AdapterStore, LoraSpec
from spring_core.types import Passage

KIND = "dyprag"
TRANSLATOR = "translator.safetensors"
TOKENIZER_DIR = "tokenizer"


def layer_index(module_name: str) -> int:
    """The layer a module belongs to: the first all-digit part of its name (``model.layers.7.mlp.up_proj`` -> 7;
    0 when there is none)."""
    for part in module_name.split("."):
        if part.isdigit():
            return int(part)
    return 0


def document_text(document: Passage) -> str:
    """What the translator reads of a document: its text, after its title and a newline when it has one."""
    if isinstance(document, str):
        return document
    text, title = str(document.get("text") or ""), str(document.get("title") or "")
    return f"{title}\n{text}" if title else text


@dataclass(frozen=True)
class DyPRAGConfig:
    """The shape of a DyPRAG parameter translator (stored in the artifact's manifest).

    Args:
        hidden_size: width of the document state, the base model's last hidden state.
        spec: the adapters it emits: rank, alpha and the ``[out, in]`` shape of every target module (PRAG's
            ``LoraSpec``; the translator regresses on a PRAG store with this spec).
        width: ``p``, the hidden width of each head's two MLPs (32 in the paper).
        init_std: the standard deviation of every translator weight at initialisation.
        max_document_tokens: documents are cut to their first this many tokens before the state is read.

    The scale: the update a generated ``(A, B)`` makes is ``(alpha / r) * B @ A``, PRAG's, on purpose. The
    reference code regresses the generated ``A`` and ``B`` on PRAG's (which PRAG applies with ``alpha / r``, 16
    for rank 2 and alpha 32) but injects ``B @ A`` without the scale, so a perfect regression would apply a
    sixteenth of PRAG's update and the LM loss and the MSE pull the factors towards different targets. Keeping
    PRAG's scale makes the two losses agree (PRAG's own factors are a minimum of both), and makes a generated
    adapter a PRAG adapter: it goes into the same ``AdapterStore``, through the same ``LoraUpdate.sum``, hooks and
    vLLM merge, with nothing to convert.

    ``init_std`` (1e-3) keeps the first generated updates near zero (``|B A|`` ~ 1e-8, so training starts at the
    base model) while both MLP layers get gradients Adam can use from the first step; the reference's 1e-7 puts the
    first layer's gradients near Adam's epsilon until the second layer has grown.

    Example:
        >>> spec = LoraSpec.for_model(model, rank=2, alpha=32)               # the tiny Llama: 2 layers, hidden 64
        >>> config = DyPRAGConfig(hidden_size=64, spec=spec, width=8)
        >>> ParameterTranslator(config).num_parameters()                     # SmolLM2 with p=32: about 15.5 M
        24672
    """

    hidden_size: int
    spec: LoraSpec
    width: int = 32
    init_std: float = 1e-3
    max_document_tokens: int = 512
    layers: dict[str, int] = field(default_factory=dict)  # empty: read from the module names (layer_index)

    def __post_init__(self) -> None:
        for name, value in (("hidden_size", self.hidden_size), ("width", self.width),
                            ("max_document_tokens", self.max_document_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise OptionError(f"DyPRAGConfig.{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.init_std, (int, float)) and 0 < self.init_std < 1):
            raise OptionError(f"DyPRAGConfig.init_std must be in (0, 1), got {self.init_std!r}; near zero (1e-3) "
                              "starts the translator at the base model")
        if not self.spec.modules:
            raise OptionError("DyPRAGConfig.spec has no modules to emit adapters for")
        unknown = sorted(set(self.layers) - set(self.spec.modules))
        if unknown:
            raise OptionError(f"DyPRAGConfig.layers names modules the spec lacks: {unknown[:3]}")
        if not self.layers:
            object.__setattr__(self, "layers", {name: layer_index(name) for name in self.spec.modules})

    @classmethod
    def for_model(cls, model: Any, spec: LoraSpec, **settings: Any) -> DyPRAGConfig:
        """The config for ``model``'s hidden size and the adapters of ``spec``."""
        return cls(hidden_size=int(model.config.get_text_config().hidden_size), spec=spec, **settings)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "spec": self.spec.to_json()}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> DyPRAGConfig:
        try:
            return cls(hidden_size=int(value["hidden_size"]), spec=LoraSpec.from_json(value["spec"]),
                       width=int(value["width"]), init_std=float(value["init_std"]),
                       max_document_tokens=int(value["max_document_tokens"]),
                       layers={str(k): int(v) for k, v in dict(value.get("layers") or {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"the translator config is damaged ({exc!r}); copy the artifact folder again") from exc


class TranslatorHead(torch.nn.Module):
    """One ``(module, layer)``: ``A = W2a relu(W1a x)`` as ``[r, in]`` and ``B = W2b relu(W1b x)`` as ``[out, r]``,
    with ``x = concat(s, layer_index)``, all bias-free."""

    def __init__(self, hidden_size: int, width: int, rank: int, out_features: int, in_features: int):
        super().__init__()
        self.shape = (rank, out_features, in_features)
        self.a_in = torch.nn.Linear(hidden_size + 1, width, bias=False)
        self.a_out = torch.nn.Linear(width, rank * in_features, bias=False)
        self.b_in = torch.nn.Linear(hidden_size + 1, width, bias=False)
        self.b_out = torch.nn.Linear(width, out_features * rank, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rank, out_features, in_features = self.shape
        a = self.a_out(torch.relu(self.a_in(x))).view(-1, rank, in_features)
        b = self.b_out(torch.relu(self.b_in(x))).view(-1, out_features, rank)
        return a, b


class ParameterTranslator(torch.nn.Module):
    """Document states ``[batch, hidden]`` -> per module, ``(A [batch, r, in], B [batch, out, r])``; every weight
    starts ``N(0, init_std^2)`` drawn from ``seed``."""

    def __init__(self, config: DyPRAGConfig, *, seed: int = 0):
        super().__init__()
        self.config = config
        self.names = list(config.spec.modules)
        self.heads = torch.nn.ModuleList(
            TranslatorHead(config.hidden_size, config.width, config.spec.rank, out_features, in_features)
            for out_features, in_features in config.spec.modules.values())
        self.register_buffer("layer_ids", torch.tensor([float(config.layers[n]) for n in self.names]),
                             persistent=False)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * config.init_std)

    def forward(self, states: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        states = states.float()
        out = {}
        for i, (name, head) in enumerate(zip(self.names, self.heads, strict=True)):
            layer = self.layer_ids[i].expand(states.shape[0], 1)
            out[name] = head(torch.cat([states, layer], dim=1))
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def document_ids(tokenizer: Any, document: Passage, max_tokens: int) -> list[int]:
    """The ids the translator reads: the tokenizer's own special tokens (e.g. a BOS) around the document, whose
    text is read as plain characters (a ``<|im_end|>`` inside it is text, not a special token), cut to
    ``max_tokens``."""
    ids = list(tokenizer(document_text(document), split_special_tokens=True)["input_ids"])[:max_tokens]
    if not ids:
        raise OptionError("the document is empty, so the translator has nothing to read; pass its text")
    return ids


@torch.no_grad()
def document_states(model: Any, ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """The last-layer hidden state at each document's last token, ``[documents, hidden]`` float32; each document
    is read alone (no padding), so its state does not depend on what else is encoded with it."""
    device = model.get_input_embeddings().weight.device
    states = []
    for row in ids:
        output = model(input_ids=torch.tensor([list(row)], device=device), output_hidden_states=True, use_cache=False,
                       logits_to_keep=1)
        states.append(output.hidden_states[-1][0, -1].float())
    return torch.stack(states)


class DyPRAG:
    """A trained translator on its base model: ``encode`` reads a document's adapter off the model.

    Args:
        translator: the ``ParameterTranslator`` (moved to the model's device, float32).
        model: the frozen base model (only read).
        tokenizer: the tokenizer the translator reads documents with.
        manifest: the artifact's manifest when opened from a folder.
    """

    def __init__(self, translator: ParameterTranslator, model: Any, tokenizer: Any, *,
                 manifest: dict[str, Any] | None = None):
        self.translator = translator.to(model.get_input_embeddings().weight.device, torch.float32)
        self.model, self.tokenizer = model, tokenizer
        self.config = translator.config
        self.manifest = manifest or {}

    @property
    def spec(self) -> LoraSpec:
        return self.config.spec

    def state(self, document: Passage) -> torch.Tensor:
        """The document state ``s`` ``[hidden]`` the translator reads."""
        return document_states(self.model, [document_ids(self.tokenizer, document, self.config.max_document_tokens)])[0]

    @torch.no_grad()
    def encode(self, document: Passage) -> dict[str, torch.Tensor]:
        """The document's adapter as a PRAG store holds it: ``{"<module>.lora_A": [r, in], ".lora_B": [out, r]}``
        on the CPU, in the spec's storage dtype (so a stored copy is bit for bit this one); the update it makes is
        ``(alpha / r) * B @ A``."""
        factors = self.translator(self.state(document)[None])
        dtype = DTYPES[self.spec.dtype]
        adapter = {}
        for name, (a, b) in factors.items():
            adapter[f"{name}.lora_A"] = a[0].detach().to("cpu", dtype)
            adapter[f"{name}.lora_B"] = b[0].detach().to("cpu", dtype)
        return adapter

    def adapters(self, *, store: AdapterStore | None = None, merge: str = "mean", cache_size: int = 32,
                 encoded_cache_size: int = 64, text_cache_size: int = 4096) -> DyPRAGAdapters:
        """The adapter set the knowledge modes use (hooks on the model); see ``DyPRAGAdapters``."""
        return DyPRAGAdapters(self, store=store, merge=merge, cache_size=cache_size,
                              encoded_cache_size=encoded_cache_size, text_cache_size=text_cache_size)

    # ----- files ---------------------------------------------------------------------------------------------

    def save(self, folder: str | Path, *, base_model_name: str, **fields: Any) -> Path:
        """Write the ``dyprag`` artifact: translator weights, tokenizer, manifest (each file atomic, manifest last)."""
        weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.translator.state_dict().items()}
        files = {TRANSLATOR: save(weights)}
        with tempfile.TemporaryDirectory() as scratch:
            self.tokenizer.save_pretrained(scratch)
            for path in sorted(Path(scratch).rglob("*")):
                if path.is_file():
                    files[f"{TOKENIZER_DIR}/{path.relative_to(scratch).as_posix()}"] = path.read_bytes()
        manifest = new_manifest(KIND, base_model_name=base_model_name, model=self.model,
                                translator=self.config.to_json(), adapter=self.spec.to_json(),
                                parameters=self.translator.num_parameters(), **fields)
        return write_artifact(folder, manifest, files)

    @classmethod
    def open(cls, folder: str | Path, model: Any, *, model_name: str = "this model") -> DyPRAG:
        """Load and check a ``dyprag`` artifact (``model``'s fingerprint, every file's SHA-256, the weights' shapes)."""
        from transformers import AutoTokenizer

        folder = Path(folder)
        manifest = read_manifest(folder, KIND)
        check_fingerprint(manifest, model, folder, model_name)
        if not isinstance(manifest.get("translator"), dict):
            raise ArtifactError(f"{folder / 'spring.json'} lacks the field 'translator'; the manifest is damaged")
        translator = ParameterTranslator(DyPRAGConfig.from_json(manifest["translator"]))
        try:
            weights = load(verified_file(folder, manifest, TRANSLATOR).read_bytes())
            translator.load_state_dict(weights, strict=True)
        except (SafetensorError, RuntimeError) as exc:
            raise ArtifactError(f"{folder / TRANSLATOR} does not hold this translator's weights ({str(exc)[:200]}); "
                                "copy the artifact folder again") from exc
        tokenizer_files = [name for name in manifest["files"] if name.startswith(f"{TOKENIZER_DIR}/")]
        if not tokenizer_files:
            raise ArtifactError(f"{folder} holds no tokenizer files; the artifact is incomplete (copy it again)")
        for name in tokenizer_files:
            verified_file(folder, manifest, name)
        tokenizer = AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR))
        return cls(translator.eval(), model, tokenizer, manifest=manifest)


class DyPRAGAdapters(CachedAdapters):
    """Document adapters made on the fly: a stored adapter when ``store`` holds one, else the translator's.

    The knowledge modes (``plan_call``) hand each call's documents to ``remember`` first, so a retrieved document
    with an id and a text needs no stored adapter; its adapter is encoded when a call first activates it and
    kept, by document id, in a bounded cache that this object owns (an adapter is ~1.5 MB for SmolLM2-135M, so
    the default 64 hold ~100 MB; a document encoded again costs one forward pass of the model).

    Args:
        dyprag: the translator on its base model.
        store: an optional PRAG store (e.g. one ``parametrize --method dyprag --encode`` filled) read first.
        merge: how several documents combine: ``"mean"`` (default), the paper's average of the ``A`` and of the
            ``B`` factors, one rank-``r`` update, or ``"sum"``, the exact sum of their updates (ranks stacked, as
            PRAG does). Either way a precomputed store answers as the translator on the fly. The mean is the
            default because it measured far better: on ``benchmarks/parametric.py``, DyPRAG-Combine F1 22.6 with
            the mean and 2.6 with the sum (three retrieved documents; generated adapters resemble each other, so
            their sum is about three times one update).
        cache_size: how many document combinations keep their stacked update.
        encoded_cache_size: how many documents keep their generated adapter.
        text_cache_size: how many documents' texts are remembered (the most recent; at least the documents of the
            calls in flight).
    """

    def __init__(self, dyprag: DyPRAG, *, store: AdapterStore | None = None, merge: str = "mean",
                 cache_size: int = 32, encoded_cache_size: int = 64, text_cache_size: int = 4096):
        options.choice("merge", merge, options.MERGES)
        for name, size in (("encoded_cache_size", encoded_cache_size), ("text_cache_size", text_cache_size)):
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise OptionError(f"{name} must be a positive integer, got {size!r}")
        if store is not None and store.spec != dyprag.spec:
            raise ArtifactError(f"the store {store.folder} holds rank {store.spec.rank} adapters on other modules "
                                "or settings than the translator emits; pair the translator with a store it encoded")
        super().__init__(AdapterHooks(dyprag.model, list(dyprag.spec.modules)), cache_size)
        self.dyprag, self.prag_store, self.merge = dyprag, store, merge
        self.manifest = dyprag.manifest  # the translator's files and their SHA-256: what names its adapters
        self.spec = dyprag.spec
        self.encoded_cache_size, self.text_cache_size = encoded_cache_size, text_cache_size
        self._texts: OrderedDict[str, Passage] = OrderedDict()
        self._encoded: OrderedDict[str, tuple[dict[str, torch.Tensor], str]] = OrderedDict()  # adapter, text digest
        self._encode_lock = threading.Lock()

    def remember(self, doc_id: str, document: Passage) -> None:
        """Know ``doc_id``'s text, so a call can activate it (its adapter is encoded on first use). A new text for an
        id already encoded drops its adapter, so it is encoded again (cached combinations are keyed by the digests
        of their texts, so none is reused for the new one)."""
        if not isinstance(doc_id, str) or not doc_id:
            raise OptionError(f"a document id must be a non-empty string, got {doc_id!r}")
        digest = _digest(document)
        with self._encode_lock:
            self._texts[doc_id] = document
            self._texts.move_to_end(doc_id)
            while len(self._texts) > self.text_cache_size:
                self._texts.popitem(last=False)
            if doc_id in self._encoded and self._encoded[doc_id][1] != digest:
                del self._encoded[doc_id]

    def prepare(self, documents: Sequence[Any]) -> None:
        """``remember`` every document of a call that has an id and a text (``ParametricDocument``s: its ``source``,
        else its passage); one with nothing to read (an empty text, or a title and text both empty) is left out, so
        it counts as a document without an adapter (``missing_adapter`` decides)."""
        for document in documents:
            text = document.source or document.passage
            readable = bool(text) and bool(document_text(text).strip())
            if document.adapter_id is not None and readable and document.adapter_id not in self._stored():
                self.remember(str(document.adapter_id), text)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._stored() or doc_id in self._encoded or doc_id in self._texts

    def clear_cache(self) -> None:
        """Forget cached combinations and every generated adapter (the remembered texts stay, so each document is
        encoded again on its next use)."""
        with self._encode_lock:
            self._encoded.clear()
        super().clear_cache()

    def adapter(self, doc_id: str) -> dict[str, torch.Tensor]:
        """The adapter of ``doc_id``: stored, cached, or encoded now from its remembered text."""
        return self._adapters(self._snapshot((doc_id,))[1])[0]

    def _stored(self) -> Any:
        return self.prag_store if self.prag_store is not None else ()

    def identity(self, doc_ids: Sequence[str]) -> list[Any]:
        """What determines the update of ``doc_ids``: the translator's weights hash, the merge, and per document
        its stored shard or the SHA-256 of the text it is encoded from (it names a merged adapter a server loads)."""
        return self._snapshot(tuple(doc_ids))[0]

    def _snapshot(self, doc_ids: tuple[str, ...]) -> tuple[list[Any], list[_Source]]:
        """The identity and, per document, what its adapter is made from, read at one moment: another call that
        remembers a new text for an id meanwhile changes neither."""
        store = self._stored()
        translator = self.manifest.get("files", {}).get(TRANSLATOR, {}).get("sha256")
        documents, sources = [], []
        with self._encode_lock:
            for doc_id in doc_ids:
                if doc_id in store:
                    documents.append(["stored", str(self.prag_store.folder.resolve()),
                                      self.prag_store.shard_of(doc_id)])
                    sources.append(_Source(doc_id, stored=True))
                    continue
                cached, document = self._encoded.get(doc_id), self._texts.get(doc_id)
                digest = cached[1] if cached is not None else _digest(document) if document is not None else None
                documents.append(["text", digest])
                sources.append(_Source(doc_id, document=document, encoded=cached[0] if cached is not None else None,
                                       digest=digest))
        return [translator or id(self.dyprag), self.merge, documents], sources

    def _adapters(self, sources: Sequence[_Source]) -> list[dict[str, torch.Tensor]]:
        """Each source's adapter: stored, generated before, or encoded now from its text (and kept while that text
        is still the id's)."""
        adapters = []
        for source in sources:
            if source.stored:
                adapters.append(self.prag_store.get(source.doc_id))
                continue
            if source.digest is None:
                raise UnknownDocumentError(f"no adapter and no text for document {source.doc_id!r}; pass its passage "
                                           "with the call (ParametricDocument) or adapters.remember(id, text) first")
            if source.encoded is not None:
                with self._encode_lock:
                    if source.doc_id in self._encoded:
                        self._encoded.move_to_end(source.doc_id)
                adapters.append(source.encoded)
                continue
            adapter = self.dyprag.encode(source.document)
            with self._encode_lock:
                current = self._texts.get(source.doc_id)
                if current is not None and _digest(current) == source.digest:
                    self._encoded[source.doc_id] = (adapter, source.digest)
                    while len(self._encoded) > self.encoded_cache_size:
                        self._encoded.popitem(last=False)
            adapters.append(adapter)
        return adapters

    def _compute(self, doc_ids: tuple[str, ...], state: Any = None) -> LoraUpdate:
        adapters = merge_adapters(self._adapters(state), self.merge)  # state: _snapshot's sources, always given
        return LoraUpdate.sum(self.spec, adapters, self.dyprag.model)

    @classmethod
    def open(cls, folder: str | Path, model: Any, *, model_name: str = "this model",
             store: str | Path | AdapterStore | None = None, merge: str = "mean") -> DyPRAGAdapters:
        """``DyPRAG.open(folder, model)``'s adapter set, with the PRAG store ``store`` (a folder or an open one)."""
        if store is not None and not isinstance(store, AdapterStore):
            store = AdapterStore.open(store, model=model, model_name=model_name)
        return DyPRAG.open(folder, model, model_name=model_name).adapters(store=store, merge=merge)


@dataclass(frozen=True)
class _Source:
    """What one document's adapter is made from at a snapshot: the paired store (``stored``), an ``encoded`` adapter
    generated before, or a ``document`` to encode; ``digest`` names that text (``None``: nothing known)."""

    doc_id: str
    stored: bool = False
    document: Passage | None = None
    encoded: dict[str, torch.Tensor] | None = None
    digest: str | None = None


def _digest(document: Passage) -> str:
    """The SHA-256 of what the translator reads of ``document``."""
    return hashlib.sha256(document_text(document).encode("utf-8")).hexdigest()


def encoding_record(dyprag: DyPRAG) -> dict[str, Any]:
    """What a store that the translator filled records of it: the method and the translator's weights hash."""
    files = dyprag.manifest.get("files", {})
    return {"method": "dyprag", "translator_sha256": files.get(TRANSLATOR, {}).get("sha256"),
            "translator": json.loads(json.dumps(dyprag.config.to_json()))}

