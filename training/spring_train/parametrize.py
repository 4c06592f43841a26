"""PRAG encoding: one LoRA per augmented document, trained on its QA pairs, written to an ``AdapterStore``.

Every document starts from the same fixed initialisation (``A`` Kaiming-uniform from ``seed``, ``B`` zero, as
peft initialises a LoRA) and trains on each of its QA pairs three ways: with the passage, with the rewrite (if
the augmentation wrote one), and with neither (the Parametric RAG paper's recipe), one example per step,
``epochs`` times, AdamW without weight decay. The defaults are the paper code's: rank 2, alpha 32, ``gate_proj`` /
``up_proj`` / ``down_proj``, lr 3e-4.

Several documents train in one batch: each row carries its own document's factors (a batched matmul in the hooked
modules), the loss is the sum of the documents' own mean losses, and AdamW updates every element on its own
gradient, so a document's adapter is the one it would get trained alone (a test checks this). Documents with the
same number of examples share a batch, so no document ever takes an empty step. Finished documents are in the
store after every batch; a rerun skips them, so an interrupted run resumes.

Example:
    >>> from spring_core.data import read_corpus
    >>> from spring_train.augment import augment_corpus, read_augmented
    >>> _ = augment_corpus(None, read_corpus("corpus.jsonl")[1:3], "aug.jsonl", augmenter="cloze", show_progress=False)
    >>> report = parametrize(sm, read_augmented("aug.jsonl"), "doc-adapters/", PragSettings(), model_name="tiny",
    ...                      show_progress=False)
    >>> report.encoded, report.skipped, report.seconds_per_document > 0
    (2, 0, True)
    >>> parametrize(sm, read_augmented("aug.jsonl"), "doc-adapters/", PragSettings(), model_name="tiny",
    ...             show_progress=False).skipped      # a rerun skips what the store holds
    2
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from spring_core.errors import SpringError
from spring_core.model.spring_model import SpringModel
from spring_core.parametric import AdapterHooks, AdapterStore, LoraSpec
from spring_core.parametric.store import mlp_targets
from spring_train.batching import Example, answer_ids, answer_loss_sum, collate
from spring_train.methods import freeze


@dataclass(frozen=True)
class PragSettings:
    """How every document adapter is trained (recorded in the store's manifest)."""

    rank: int = 2
    alpha: float = 32.0
    targets: tuple[str, ...] = ()  # empty: the architecture's MLP projections (mlp_targets)
    lr: float = 3e-4
    epochs: int = 1
    docs_per_batch: int = 8
    seed: int = 0
    storage_dtype: str = "float32"
    max_answer_tokens: int = 32


@dataclass
class ParametrizeReport:
    encoded: int = 0
    skipped: int = 0
    not_augmented: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def seconds_per_document(self) -> float:
        return self.seconds / self.encoded if self.encoded else 0.0


class RowwiseLora:
    """A LoRA update per batch row (row ``i`` uses document ``i``'s factors): what the hooks add in training."""

    def __init__(self, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], scale: float):
        self.a, self.b, self.scale = a, b, scale

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        a, b = self.a.get(name), self.b.get(name)
        if a is None or b is None:
            return None
        return rowwise_delta(x, a, b, self.scale)


def rowwise_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * x_i @ A_i^T @ B_i^T`` for every row ``i``: ``x [B, T, in]``, ``a [B, r, in]``, ``b [B, out, r]``."""
    return torch.bmm(torch.bmm(x.to(a.dtype), a.transpose(1, 2)), b.transpose(1, 2)) * scale


def kaiming_a(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """A LoRA ``A`` factor as peft initialises it (``kaiming_uniform_(a=sqrt(5))``: uniform in +-1/sqrt(in),
    ``in`` = the last dimension), drawn from ``generator``."""
    return (torch.rand(*shape, generator=generator) * 2 - 1) * (1.0 / math.sqrt(shape[-1]))


def shared_initialisation(spec: LoraSpec, seed: int) -> dict[str, torch.Tensor]:
    """The one starting point of every document: peft's LoRA init (``A`` Kaiming-uniform, ``B`` zero), seeded."""
    generator = torch.Generator().manual_seed(seed)
    init = {}
    for name, (out_features, in_features) in spec.modules.items():
        init[f"{name}.lora_A"] = kaiming_a(spec.rank, in_features, generator=generator)
        init[f"{name}.lora_B"] = torch.zeros(out_features, spec.rank)
    return init


def answer_losses(model: Any, hooks: AdapterHooks, batch: Any, update: Any,
                  answer_lengths: Sequence[int]) -> torch.Tensor:
    """Each row's mean answer loss ``[rows]``, with ``update`` added by the modules ``hooks`` holds (left padding:
    position ids follow the mask, so a row's loss does not depend on its batch mates)."""
    with hooks.active(update):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0),
                       logits_to_keep=batch.labels.shape[1] + 1).logits
    return torch.stack([answer_loss_sum(logits[i:i + 1], batch.labels[i:i + 1]) / length
                        for i, length in enumerate(answer_lengths)])


def document_examples(sm: SpringModel, row: Mapping[str, Any], max_answer_tokens: int) -> list[Example]:
    """Each QA pair with the passage, with the rewrite (when there is one), and alone, in ``sm``'s layout (no
    virtual tokens)."""
    title = str(row.get("title") or "")
    contexts: list[list[dict[str, str]]] = [[{"title": title, "text": row["text"]}]]
    if row.get("rewrite"):
        contexts.append([{"title": title, "text": row["rewrite"]}])
    contexts.append([])
    examples = []
    for pair in row["qa"]:
        target = answer_ids(sm.tokenizer, pair["answer"], sm.layout, max_answer_tokens)
        for passages in contexts:
            prompt = sm.encode(sm.prompt_parts(pair["question"], passages, 0))
            examples.append(Example(prompt + target, len(target)))
    return examples


def parametrize(sm: SpringModel, augmented: Mapping[str, Mapping[str, Any]], store_folder: str | Path,
                settings: PragSettings, *, model_name: str, process: tuple[int, int] = (0, 1),
                show_progress: bool = True) -> ParametrizeReport:
    """Encode every ``ok`` document of ``augmented`` (id -> row) that the store at ``store_folder`` lacks.

    ``process``: ``(index, count)`` of this process among several encoding into the same store
    (``spring_train.sharding``); it encodes its share of the documents (every ``count``-th, by position).
    """
    from spring_train.sharding import share

    model = sm.model
    freeze(model)
    spec = LoraSpec.for_model(model, rank=settings.rank, alpha=settings.alpha, targets=settings.targets,
                              dtype=settings.storage_dtype)
    store = AdapterStore.open_or_create(store_folder, model, spec, base_model_name=model_name, model_name=model_name,
                                        encoding={"method": "prag", "settings": _recorded(settings, model)})
    recorded = store.manifest.get("encoding", {}).get("settings")
    if store.spec != spec or recorded != _recorded(settings, model):
        raise SpringError(f"{store_folder} was encoded with other settings ({recorded}); use a new --out folder")
    docs, report = _usable(augmented)
    docs = share(docs, *process)
    todo = [(doc_id, document_examples(sm, row, settings.max_answer_tokens)) for doc_id, row in docs
            if doc_id not in store]
    report.skipped = len(docs) - len(todo)
    init = shared_initialisation(spec, settings.seed)
    began = time.perf_counter()
    progress = _progress(len(todo), show_progress)
    with AdapterHooks(model, list(spec.modules)) as hooks:
        for group in _groups(todo, settings.docs_per_batch):
            trained = train_group(model, hooks, spec, init, group, settings, pad_id=sm.pad_token_id)
            store.add(trained)
            report.encoded += len(trained)
            progress.update(len(trained))
    progress.close()
    report.seconds = time.perf_counter() - began
    return report


def train_group(model: Any, hooks: AdapterHooks, spec: LoraSpec, init: Mapping[str, torch.Tensor],
                group: Sequence[tuple[str, list[Example]]], settings: PragSettings,
                pad_id: int) -> dict[str, dict[str, torch.Tensor]]:
    """Train the adapters of documents that have the same number of examples, side by side; returns them."""
    count = len(group[0][1])
    if any(len(examples) != count for _, examples in group):
        raise ValueError("documents trained together need the same number of examples")
    device = model.get_input_embeddings().weight.device
    a = {n: init[f"{n}.lora_A"].expand(len(group), -1, -1).clone().to(device).requires_grad_() for n in spec.modules}
    b = {n: init[f"{n}.lora_B"].expand(len(group), -1, -1).clone().to(device).requires_grad_() for n in spec.modules}
    optimizer = torch.optim.AdamW([*a.values(), *b.values()], lr=settings.lr, weight_decay=0.0)
    update = RowwiseLora(a, b, spec.scale)
    orders = [_order(doc_id, count, settings) for doc_id, _ in group]
    for step in range(count * settings.epochs):
        rows = [examples[order[step]] for (_, examples), order in zip(group, orders, strict=True)]
        losses = answer_losses(model, hooks, collate(rows, pad_id).to(device), update,
                               [r.answer_length for r in rows])
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
    return {doc_id: {**{f"{n}.lora_A": a[n][i].detach().cpu() for n in spec.modules},
                     **{f"{n}.lora_B": b[n][i].detach().cpu() for n in spec.modules}}
            for i, (doc_id, _) in enumerate(group)}


def _order(doc_id: str, count: int, settings: PragSettings) -> list[int]:
    """The document's example order over all epochs: a function of (seed, document id) only."""
    rng = random.Random(f"{settings.seed}:{doc_id}")
    order: list[int] = []
    for _ in range(settings.epochs):
        epoch = list(range(count))
        rng.shuffle(epoch)
        order.extend(epoch)
    return order


def _groups(todo: Sequence[tuple[str, list[Example]]], size: int) -> list[list[tuple[str, list[Example]]]]:
    by_count: dict[int, list[tuple[str, list[Example]]]] = {}
    for item in todo:
        by_count.setdefault(len(item[1]), []).append(item)
    return [docs[i:i + size] for _, docs in sorted(by_count.items()) for i in range(0, len(docs), size)]


def _recorded(settings: PragSettings, model: Any) -> dict[str, Any]:
    """The settings that shape an adapter (how many documents share a batch does not), targets resolved."""
    recorded = {**asdict(settings), "targets": list(settings.targets or mlp_targets(model))}
    recorded.pop("docs_per_batch")
    return recorded


def _progress(total: int, enabled: bool, *, desc: str = "parametrize", unit: str = "doc") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled)


# ----- Poly-PRAG -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolySettings:
    """How the latent experts and the routing vectors are trained (recorded in the artifact's manifest)."""

    experts: int = 16
    top_experts: int = 4
    rank: int = 2
    alpha: float = 32.0
    targets: tuple[str, ...] = ()  # empty: the architecture's MLP projections (mlp_targets)
    lr: float = 3e-4
    routing_lr: float = 1e-2
    epochs: int = 2
    batch_size: int = 8
    seed: int = 0
    storage_dtype: str = "float32"
    max_answer_tokens: int = 32


class _RoutedRows:
    """Per batch row, the experts mixed by that row's document routing (``Update`` for the hooks)."""

    def __init__(self, experts: Mapping[str, torch.Tensor], weights: torch.Tensor, spec: LoraSpec):
        self.experts, self.weights, self.spec = experts, weights, spec

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        if name not in self.spec.modules:
            return None
        a = torch.tensordot(self.weights, self.experts[f"{name}.lora_A"], dims=([1], [0]))
        b = torch.tensordot(self.weights, self.experts[f"{name}.lora_B"], dims=([1], [0]))
        return rowwise_delta(x, a, b, self.spec.scale)


def train_poly(sm: SpringModel, augmented: Mapping[str, Mapping[str, Any]], settings: PolySettings, *,
               show_progress: bool = True) -> tuple[Any, ParametrizeReport]:
    """Train ``settings.experts`` latent experts and one routing vector per ``ok`` document, jointly (every
    document is a task); returns the ``PolyAdapters`` and a report."""
    from spring_core.parametric.poly import PolyAdapters

    model = sm.model
    freeze(model)
    spec = LoraSpec.for_model(model, rank=settings.rank, alpha=settings.alpha, targets=settings.targets,
                              dtype=settings.storage_dtype)
    docs, report = _usable(augmented)
    if not docs:
        raise SpringError("no augmented document is usable (status 'ok'); run `spring-rag augment` first")
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator().manual_seed(settings.seed)
    experts = {}
    for name, (out_features, in_features) in spec.modules.items():
        experts[f"{name}.lora_A"] = kaiming_a(settings.experts, spec.rank, in_features,
                                              generator=generator).to(device).requires_grad_()
        experts[f"{name}.lora_B"] = torch.zeros(settings.experts, out_features, spec.rank, device=device,
                                                requires_grad=True)
    routing = _initial_routing(len(docs), settings.experts, generator, device)
    groups = [{"params": list(experts.values()), "lr": settings.lr}, {"params": [routing], "lr": settings.routing_lr}]
    began = time.perf_counter()
    _train_routed(sm, spec, experts, routing, docs, settings, torch.optim.AdamW(groups, weight_decay=0.0),
                  show_progress)
    report.encoded, report.seconds = len(docs), time.perf_counter() - began
    poly = PolyAdapters(spec, {k: v.detach() for k, v in experts.items()}, routing.detach().cpu(),
                        [doc_id for doc_id, _ in docs], model, top_experts=settings.top_experts)
    return poly, report


def add_poly_documents(sm: SpringModel, poly: Any, augmented: Mapping[str, Mapping[str, Any]],
                       settings: PolySettings, *, show_progress: bool = True) -> ParametrizeReport:
    """Give new documents a routing vector each, trained on their data with the experts frozen; ``poly`` grows."""
    new = {doc_id: row for doc_id, row in augmented.items() if doc_id not in poly}
    docs, report = _usable(new)
    report.skipped = len(augmented) - len(new)
    if not docs:
        return report
    device = sm.model.get_input_embeddings().weight.device
    generator = torch.Generator().manual_seed(settings.seed + len(poly))
    routing = _initial_routing(len(docs), poly.num_experts, generator, device)
    experts = {k: v.detach().to(device) for k, v in poly.experts.items()}
    began = time.perf_counter()
    optimizer = torch.optim.AdamW([routing], lr=settings.routing_lr, weight_decay=0.0)
    _train_routed(sm, poly.spec, experts, routing, docs, settings, optimizer, show_progress)
    poly.routing = torch.cat([poly.routing, routing.detach().cpu()])
    poly.doc_ids.extend(doc_id for doc_id, _ in docs)
    poly.rows = {doc_id: i for i, doc_id in enumerate(poly.doc_ids)}
    report.encoded, report.seconds = len(docs), time.perf_counter() - began
    return report


def _initial_routing(documents: int, experts: int, generator: torch.Generator, device: Any) -> torch.Tensor:
    """Routing logits near zero (almost uniform over the experts), small random values to break the tie."""
    return (torch.randn(documents, experts, generator=generator) * 0.01).to(device).requires_grad_()


def _usable(augmented: Mapping[str, Mapping[str, Any]]) -> tuple[list[tuple[str, Mapping[str, Any]]],
                                                                  ParametrizeReport]:
    report = ParametrizeReport()
    docs = []
    for doc_id, row in augmented.items():
        if row.get("status") == "ok":
            docs.append((doc_id, row))
        else:
            report.not_augmented.append(doc_id)
    return docs, report


def _train_routed(sm: SpringModel, spec: LoraSpec, experts: Mapping[str, torch.Tensor], routing: torch.Tensor,
                  docs: Sequence[tuple[str, Mapping[str, Any]]], settings: PolySettings, optimizer: Any,
                  show_progress: bool) -> None:
    """Steps over every document's examples, shuffled together; row ``i`` is routed by its document's vector."""
    model = sm.model
    items = [(row_index, example) for row_index, (_, row) in enumerate(docs)
             for example in document_examples(sm, row, settings.max_answer_tokens)]
    rng = random.Random(settings.seed)
    device = model.get_input_embeddings().weight.device
    steps = settings.epochs * math.ceil(len(items) / settings.batch_size)
    progress = _progress(steps, show_progress, desc="poly", unit="step")
    with AdapterHooks(model, list(spec.modules)) as hooks:
        for _ in range(settings.epochs):
            order = list(range(len(items)))
            rng.shuffle(order)
            for start in range(0, len(order), settings.batch_size):
                chosen = [items[i] for i in order[start:start + settings.batch_size]]
                batch = collate([example for _, example in chosen], sm.pad_token_id).to(device)
                weights = torch.softmax(routing[[doc for doc, _ in chosen]], dim=-1)
                losses = answer_losses(model, hooks, batch, _RoutedRows(experts, weights, spec),
                                       [example.answer_length for _, example in chosen])
                optimizer.zero_grad(set_to_none=True)
                losses.mean().backward()
                optimizer.step()
                progress.update(1)
    progress.close()
