"""Apply the summed LoRA update of retrieved documents to a frozen model for one call, never writing its weights.

PRAG answers with ``W + sum_i (alpha / r) B_i A_i`` on each target module, for the retrieved documents ``i``. Here
that update is never merged: forward hooks on the target modules add ``x @ A^T @ B^T`` to their output, where
``A`` and ``B`` are the documents' factors stacked along the rank (``[sum r, in]``, ``[out, sum r]``, the scale
folded into ``B``), which is exactly the sum of the per-document updates.

The hooks belong to the adapter set that installed them (``spring_core.parametric.hooks.AdapterHooks``):
``close()`` takes them off the model again. Which update a forward pass sees is held per thread and per asyncio
task, so concurrent requests with different documents never see each other's adapters, and a pass with no active
update runs the untouched modules (the hooks return ``None``), bit for bit the base model.

Example:
    >>> adapters = DocumentAdapters(AdapterStore.open("adapters/", model=model), model)
    >>> with adapters.activate(["doc-1", "doc-7", "doc-9"]) as update:
    ...     answer = sm.generate(question, passages=None, max_new_tokens=4)
    >>> update.rank, answer.usage.virtual_tokens     # three rank-2 documents stacked; the block: all 10 tokens
    (6, 10)
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from spring_core import options
from spring_core.errors import SpringError
from spring_core.parametric.hooks import AdapterHooks
from spring_core.parametric.store import AdapterStore, LoraSpec

SNAPSHOT_TRIES = 8
"""How often ``CachedAdapters.update_and_identity`` makes an update again when its documents keep changing."""


@dataclass(frozen=True)
class LoraUpdate:
    """The summed update of some documents: per module name, ``(A [R, in], B [out, R])`` with the scale in ``B``.

    Example:
        >>> store = AdapterStore.open("adapters/", model=model)
        >>> update = LoraUpdate.sum(store.spec, [store.get("doc-1"), store.get("doc-2")], model)
        >>> sorted(update.factors)[0], update.factors["model.layers.0.mlp.up_proj"][0].shape   # [2 + 2, hidden]
        ('model.layers.0.mlp.down_proj', torch.Size([4, 64]))
    """

    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def rank(self) -> int:
        """The stacked rank: the sum of the documents' ranks (an expert mix keeps the experts' rank)."""
        return max((a.shape[0] for a, _ in self.factors.values()), default=0)

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        """What module ``name`` adds to its output for input ``x`` (``None``: nothing)."""
        factors = self.factors.get(name)
        if factors is None:
            return None
        a, b = factors
        return x.to(a.dtype) @ a.T @ b.T

    @classmethod
    def sum(cls, spec: LoraSpec, adapters: Sequence[Mapping[str, torch.Tensor]], model: Any,
            weights: Sequence[float] | None = None) -> LoraUpdate:
        """``sum_i w_i (alpha / r) B_i A_i`` (``w_i = 1`` by default) as stacked factors on ``model``'s modules'
        device and dtype."""
        if weights is not None and len(weights) != len(adapters):
            raise ValueError(f"got {len(adapters)} adapters but {len(weights)} weights")
        modules = dict(model.named_modules())
        factors = {}
        for name in spec.modules:
            weight = modules[name].weight
            a = torch.cat([adapter[f"{name}.lora_A"] for adapter in adapters], dim=0)
            b = torch.cat([adapter[f"{name}.lora_B"] * (spec.scale * (1.0 if weights is None else weights[i]))
                           for i, adapter in enumerate(adapters)], dim=1)
            factors[name] = (a.to(weight.device, weight.dtype), b.to(weight.device, weight.dtype))
        return cls(factors)


def merge_adapters(adapters: Sequence[Mapping[str, torch.Tensor]], merge: str) -> list[Mapping[str, torch.Tensor]]:
    """The adapters ``LoraUpdate.sum`` stacks for ``merge``: ``"sum"``, all of them (the exact sum of their
    updates), or ``"mean"``, one adapter whose ``A`` and ``B`` are the averages of theirs (DyPRAG's combination; not
    the mean of the updates, which has cross terms)."""
    if options.choice("merge", merge, options.MERGES) == "sum" or len(adapters) < 2:
        return list(adapters)
    return [{key: torch.stack([adapter[key].float() for adapter in adapters]).mean(dim=0) for key in adapters[0]}]


def default_merge(store: AdapterStore) -> str:
    """How a store's adapters combine unless the caller says: ``"mean"`` for a store the DyPRAG translator filled
    (its adapters resemble each other, so their sum is about n times one update), ``"sum"`` for trained ones."""
    return "mean" if (store.manifest.get("encoding") or {}).get("method") == "dyprag" else "sum"


class CachedAdapters:
    """What both kinds of parametric knowledge share: a cache of the updates of recent document combinations, and
    ``activate``, which makes one of them the update of the calling context for a block.

    Subclasses say which documents they know (``__contains__``) and how an update is made (``_compute``).
    """

    def __init__(self, hooks: AdapterHooks | None, cache_size: int = 32):
        self.hooks = hooks
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[tuple[str, ...], str], LoraUpdate] = OrderedDict()  # ids, identity
        self._lock = threading.Lock()

    def __contains__(self, doc_id: object) -> bool:
        raise NotImplementedError

    def _compute(self, doc_ids: tuple[str, ...], state: Any = None) -> LoraUpdate:
        """The update of ``doc_ids``, made from ``state`` (``_snapshot``'s) when the subclass takes one."""
        raise NotImplementedError

    def identity(self, doc_ids: Sequence[str]) -> Any:
        """What determines the update of ``doc_ids`` (JSON-able; it names a merged adapter a server loads): here the
        artifact's manifest, written anew with each save."""
        return getattr(self, "manifest", None) or {}

    def _snapshot(self, doc_ids: tuple[str, ...]) -> tuple[Any, Any]:
        """``(identity, state)``: what determines the update of ``doc_ids`` now, and what ``_compute`` needs to make
        exactly that update. ``state`` ``None`` (the default): ``_compute`` reads the documents itself, and
        ``update_and_identity`` reads the identity again afterwards to check that they did not change meanwhile."""
        return self.identity(doc_ids), None

    def update_for(self, doc_ids: Sequence[str]) -> LoraUpdate | None:
        """The update for ``doc_ids`` (``None`` for no documents); unknown ids raise ``UnknownDocumentError``."""
        return self.update_and_identity(doc_ids)[0]

    def update_and_identity(self, doc_ids: Sequence[str]) -> tuple[LoraUpdate | None, Any]:
        """The update for ``doc_ids`` and its ``identity``, taken together, so a name made from the identity never
        labels another update: the cache is keyed by the identity (a replaced document or a new text makes a new
        update), and an update made while its documents changed is made again."""
        key = tuple(doc_ids)
        if not key:
            return None, None
        for _ in range(SNAPSHOT_TRIES):
            identity, state = self._snapshot(key)
            cache_key = (key, json.dumps(identity, sort_keys=True, default=str))
            with self._lock:
                if cache_key in self._cache:
                    self._cache.move_to_end(cache_key)
                    return self._cache[cache_key], identity
            update = self._compute(key, state)
            if state is None and self.identity(key) != identity:
                continue  # a document changed while its update was made: make it again from what is there now
            with self._lock:
                self._cache[cache_key] = update
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return update, identity
        raise SpringError(f"the adapters of {list(key)} changed {SNAPSHOT_TRIES} times while their update was being "
                          "made (another writer is replacing them); try the call again")

    def clear_cache(self) -> None:
        """Forget every cached combination's update (to free its memory, or to time a cold activation); the next
        ``activate`` computes it again."""
        with self._lock:
            self._cache.clear()

    @contextmanager
    def activate(self, doc_ids: Sequence[str]) -> Iterator[LoraUpdate | None]:
        """Forward passes in this block (this thread / task only) run with the documents' update."""
        update = self.update_for(doc_ids)
        if self.hooks is None or not self.hooks.installed:
            raise SpringError(f"{type(self).__name__} is closed or was opened without a model, so there is nothing "
                              "to activate its adapters on; open it (again) with the model")
        with self.hooks.active(update):
            yield update

    def close(self) -> None:
        """Take this adapter set's hooks off the model (the model is then exactly the base model again)."""
        if self.hooks is not None:
            self.hooks.remove()

    def __enter__(self) -> CachedAdapters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DocumentAdapters(CachedAdapters):
    """A store's adapters on one model: the summed update of any set of documents, cached, activated per call.

    Args:
        store: the ``AdapterStore`` (its fingerprint is checked against ``model`` on open).
        model: the frozen base model; its weights are only read.
        merge: how several documents combine (``merge_adapters``): ``"sum"``, PRAG's exact sum, or ``"mean"``;
            default ``default_merge(store)``: the mean for a store the DyPRAG translator encoded, else the sum.
        cache_size: how many recent document combinations keep their stacked factors in memory.

    Example:
        >>> store = AdapterStore.open("adapters/", model=model)
        >>> adapters = DocumentAdapters(store, model)
        >>> input_ids = torch.tensor([tokenizer(question)["input_ids"]])
        >>> with adapters.activate(["doc-1", "doc-2"]):
        ...     logits = model(input_ids).logits
        >>> bool(torch.equal(logits, model(input_ids).logits)), "doc-2" in adapters
        (False, True)
    """

    def __init__(self, store: AdapterStore, model: Any, *, merge: str | None = None, cache_size: int = 32):
        self.merge = options.choice("merge", merge, options.MERGES) if merge is not None else default_merge(store)
        super().__init__(AdapterHooks(model, list(store.spec.modules)), cache_size)
        self.store = store
        self.model = model

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.store

    def identity(self, doc_ids: Sequence[str]) -> Any:
        """The store's folder, the shards holding ``doc_ids`` (a replaced adapter lands in a new shard) and the
        merge."""
        return [str(self.store.folder.resolve()), [self.store.shard_of(doc_id) for doc_id in doc_ids], self.merge]

    def _compute(self, doc_ids: tuple[str, ...], state: Any = None) -> LoraUpdate:
        adapters = merge_adapters([self.store.get(doc_id) for doc_id in doc_ids], self.merge)
        return LoraUpdate.sum(self.store.spec, adapters, self.model)
