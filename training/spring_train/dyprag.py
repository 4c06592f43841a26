"""DyPRAG training and encoding: a parameter translator learned from a PRAG store, then adapters without training.

``train_dyprag`` reads, for every augmented document the PRAG store holds an adapter for: the document state (the
frozen model's last hidden state at the document's last token), the document's QA examples (PRAG's: each pair
with the passage, with the rewrite, and alone) and its PRAG adapter. One optimizer step per document, in a seeded
order per epoch; the loss is DyPRAG's::

    LM(answers | generated update)  +  kl_weight * KL(teacher || student)  +  mse_weight * MSE((A, B), PRAG's)

with the teacher the model with the document's PRAG adapter. The LM loss and the KL are taken on the answer tokens
(PRAG here trains its adapters on the answer loss; the reference averages over every position of a padded 3000-token
row, so its KL weight means something else); the KL is the mean over answer tokens of the summed-over-vocabulary
divergence; the MSE is the sum over modules of the mean squared error of ``A`` and of ``B``, as in the reference.
Only the translator trains: the base model is frozen and only read (hooks add the update).

Checkpoints (``OUT/checkpoints/step-N``: translator, AdamW state, step; safetensors + JSON, never a pickle) are
written atomically every ``checkpoint_every`` steps and on Ctrl-C; ``resume=True`` continues from the last one,
bit for bit the run that was not stopped. The result is a ``dyprag`` artifact (``DyPRAG.save``) with the scores
measured after training: the mean answer loss of the training documents with no adapter, PRAG's and the
translator's, the regression error, and the seconds per document to encode.

``encode_corpus`` then writes the translator's adapters for any corpus into a PRAG ``AdapterStore``, resumable.

Example:
    >>> from spring_train.parametrize import PragSettings, parametrize
    >>> augmented = {
    ...     "harvard": {"status": "ok", "title": "Harvard", "text": "Harvard is named after John Harvard.",
    ...                 "qa": [{"question": "Who is Harvard named after?", "answer": "John Harvard"}]},
    ...     "yale": {"status": "ok", "title": "Yale", "text": "Yale is in New Haven.",
    ...              "qa": [{"question": "Where is Yale?", "answer": "New Haven"}]}}
    >>> _ = parametrize(sm, augmented, "prag/", PragSettings(lr=2e-2, epochs=3), model_name="tiny",
    ...                 show_progress=False)                                # the PRAG pairs to learn from
    >>> report = train_dyprag(sm, augmented, "prag/", "translator/", DyPRAGSettings(width=8, lr=3e-3, epochs=5),
    ...                       model_name="tiny", show_progress=False)
    >>> report.steps, report.final["loss"] < report.first["loss"]          # one step per document and epoch
    (10, True)
    >>> dyprag = DyPRAG.open("translator/", sm.model)
    >>> encode_corpus(dyprag, [{"id": "rice", "title": "Rice", "text": "Rice is in Houston."}], "encoded/",
    ...               model_name="tiny", show_progress=False).encoded      # a new document, no training
    1
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from spring_core.errors import ArtifactError, SpringError
from spring_core.model.spring_model import SpringModel
from spring_core.parametric import AdapterHooks, AdapterStore, LoraUpdate
from spring_core.parametric.dyprag import (
    DyPRAG,
    DyPRAGConfig,
    ParameterTranslator,
    document_ids,
    document_states,
    encoding_record,
)
from spring_train.batching import IGNORE, Batch, answer_loss_sum, collate
from spring_train.checkpoint import (
    CHECKPOINTS,
    STATE_JSON,
    CheckpointError,
    check_output_folder,
    load_state,
    save_state,
)
from spring_train.config import ConfigError
from spring_train.methods import freeze
from spring_train.parametrize import _progress, _usable, document_examples

SCORED_DOCUMENTS = 64  # the training documents scored after training (the first ones): a bounded extra cost


@dataclass(frozen=True)
class DyPRAGSettings:
    """How the translator is trained (recorded in the artifact; a resume must use the same).

    ``lr`` 1e-4 rather than the reference's 1e-5: the reference trains on a few thousand documents, a store here
    often holds a few hundred, and one step per document at 1e-5 barely moves weights that start at 1e-3.
    """

    width: int = 32
    lr: float = 1e-4
    epochs: int = 1
    kl_weight: float = 0.01
    mse_weight: float = 100.0
    init_std: float = 1e-3
    max_document_tokens: int = 512
    max_answer_tokens: int = 32
    seed: int = 0
    held_out: float = 0.0  # this fraction of the documents (a seeded draw) is kept out of training and scored apart
    checkpoint_every: int = 50
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        for name in ("width", "epochs", "max_document_tokens", "max_answer_tokens", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"DyPRAG {name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"DyPRAG lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.held_out < 1.0:
            raise ConfigError(f"DyPRAG held_out must be a fraction in [0, 1), got {self.held_out!r}")
        if self.kl_weight < 0 or self.mse_weight < 0:
            raise ConfigError(f"DyPRAG loss weights must be >= 0, got kl {self.kl_weight}, mse {self.mse_weight}")

    def record(self) -> dict[str, Any]:
        """What shapes the trained translator (whether checkpoints are kept does not)."""
        recorded = asdict(self)
        recorded.pop("keep_checkpoints")
        recorded.pop("checkpoint_every")
        return recorded


@dataclass
class DyPRAGReport:
    """What a training run did: steps, seconds, the mean losses of every epoch, the scores, skipped documents."""

    artifact: Path
    documents: int = 0
    steps: int = 0
    seconds: float = 0.0
    epochs: list[dict[str, float]] = field(default_factory=list)  # per epoch: the mean of each loss part
    scores: dict[str, float] = field(default_factory=dict)
    without_adapter: list[str] = field(default_factory=list)
    not_augmented: list[str] = field(default_factory=list)

    @property
    def first(self) -> dict[str, float]:
        """The first epoch's mean losses (each document once, so epochs compare on the same documents)."""
        return self.epochs[0] if self.epochs else {}

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's mean losses."""
        return self.epochs[-1] if self.epochs else {}


@dataclass
class _Document:
    doc_id: str
    state: torch.Tensor
    batch: Batch
    answer_lengths: list[int]
    target: dict[str, torch.Tensor]


def train_dyprag(sm: SpringModel, augmented: Mapping[str, Mapping[str, Any]], store: str | Path | AdapterStore,
                 out: str | Path, settings: DyPRAGSettings, *, model_name: str, resume: bool = False,
                 show_progress: bool = True, on_step: Callable[[dict[str, Any]], None] | None = None) -> DyPRAGReport:
    """Train a translator on the documents of ``augmented`` that ``store`` holds PRAG adapters for; write ``out``."""
    from spring_train.trainer import TrainingInterrupted

    model = sm.model
    freeze(model)
    out = Path(out)
    check_output_folder(out, resume, run="DyPRAG run")
    if not isinstance(store, AdapterStore):
        store = AdapterStore.open(store, model=model, model_name=model_name)
    usable, report = _usable(augmented)
    pairs = [(doc_id, row) for doc_id, row in usable if doc_id in store]
    report_out = DyPRAGReport(out, not_augmented=report.not_augmented,
                              without_adapter=[doc_id for doc_id, _ in usable if doc_id not in store])
    if not pairs:
        raise SpringError(f"none of the augmented documents has a PRAG adapter in {store.folder}; encode them first "
                          "with `spring-rag parametrize AUG --method prag --out STORE`")
    pairs, apart = hold_out(pairs, settings.held_out, settings.seed)
    config = DyPRAGConfig.for_model(model, store.spec, width=settings.width, init_std=settings.init_std,
                                    max_document_tokens=settings.max_document_tokens)
    translator = ParameterTranslator(config, seed=settings.seed).to(_device(model))
    optimizer = torch.optim.AdamW(translator.parameters(), lr=settings.lr, weight_decay=0.0)
    record = {"settings": settings.record(), "store": _store_record(store), "documents": [d for d, _ in pairs]}
    start_step, seconds_before, sums = (_restore(out, record, translator, optimizer) if resume else (0, 0.0, []))

    docs = read_documents(sm, pairs, store, settings, show_progress)
    total = settings.epochs * len(docs)
    report_out.documents = len(docs)
    progress = _progress(total, show_progress, desc="dyprag", unit="step")
    progress.update(start_step)
    started, completed = time.perf_counter() - seconds_before, start_step
    with AdapterHooks(model, list(config.spec.modules)) as hooks:
        try:
            for step in range(start_step, total):
                doc = docs[_order(settings.seed, step // len(docs), len(docs))[step % len(docs)]]
                losses = _losses(model, hooks, translator, doc, config, settings)
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                optimizer.step()
                completed = step + 1
                values = {key: float(value.detach()) for key, value in losses.items()}
                if step % len(docs) == 0:
                    sums.append({key: 0.0 for key in (*values, "steps")})
                sums[-1].update({key: sums[-1][key] + value for key, value in values.items()},
                                steps=sums[-1]["steps"] + 1)
                progress.update(1)
                progress.set_postfix(loss=f"{values['loss']:.3f}", mse=f"{values['mse']:.2e}")
                if completed % settings.checkpoint_every == 0 and completed < total:
                    _save_checkpoint(out, record, translator, optimizer, completed, time.perf_counter() - started,
                                     sums)
                if on_step is not None:
                    on_step({"step": completed, **values})
        except KeyboardInterrupt:
            _save_checkpoint(out, record, translator, optimizer, completed, time.perf_counter() - started, sums)
            progress.close()
            raise TrainingInterrupted(f"interrupted after step {completed} of {total}; a checkpoint is saved in "
                                      f"{out / CHECKPOINTS}. Run the same command with --resume to continue.") from None
        progress.close()
        report_out.steps, report_out.seconds = total, time.perf_counter() - started
        report_out.epochs = [{key: round(value / epoch["steps"], 6) for key, value in epoch.items() if key != "steps"}
                             for epoch in sums]
        translator.eval()
        dyprag = DyPRAG(translator, model, sm.tokenizer)
        report_out.scores = score(dyprag, hooks, docs[:SCORED_DOCUMENTS],
                                  [row for _, row in pairs[:SCORED_DOCUMENTS]])
        if apart:
            held = read_documents(sm, apart, store, settings, show_progress=False)
            report_out.scores["held_out"] = score(dyprag, hooks, held, [row for _, row in apart])
    dyprag.save(out, base_model_name=model_name, training={**settings.record(), "steps": total,
                                                           "seconds": round(report_out.seconds, 1),
                                                           "epoch_losses": report_out.epochs},
                scores=report_out.scores, source_store=record["store"], documents=len(docs))
    if not settings.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    return report_out


def _losses(model: Any, hooks: AdapterHooks, translator: ParameterTranslator, doc: _Document,
            config: DyPRAGConfig, settings: DyPRAGSettings) -> dict[str, torch.Tensor]:
    """The step's loss and its parts for one document (every example of it in one batch)."""
    spec = config.spec
    factors = translator(doc.state[None])
    student_update = LoraUpdate({name: (a[0], b[0] * spec.scale) for name, (a, b) in factors.items()})
    student = _answer_logits(model, hooks, doc.batch, student_update)
    lm = torch.stack([answer_loss_sum(student[i:i + 1], doc.batch.labels[i:i + 1]) / length
                      for i, length in enumerate(doc.answer_lengths)]).mean()
    if settings.kl_weight > 0:  # the teacher's forward pass is a third of a step: skipped when it does not count
        with torch.no_grad():
            teacher = _answer_logits(model, hooks, doc.batch, LoraUpdate.sum(spec, [doc.target], model))
        kl = answer_kl(teacher, student, doc.batch.labels)
    else:
        kl = torch.zeros((), device=lm.device)
    mse = sum(torch.nn.functional.mse_loss(a[0], doc.target[f"{name}.lora_A"])
              + torch.nn.functional.mse_loss(b[0], doc.target[f"{name}.lora_B"]) for name, (a, b) in factors.items())
    assert isinstance(mse, torch.Tensor)
    total = lm + settings.kl_weight * kl + settings.mse_weight * mse
    return {"loss": total, "lm": lm, "kl": kl, "mse": mse}


def _answer_logits(model: Any, hooks: AdapterHooks, batch: Batch, update: Any) -> torch.Tensor:
    """Logits at the last ``L + 1`` positions (those that predict the answers), with ``update`` added."""
    with hooks.active(update):
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0),
                     logits_to_keep=batch.labels.shape[1] + 1).logits.float()


def answer_kl(teacher: torch.Tensor, student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || student)`` summed over the vocabulary, averaged over the answer positions of ``labels``."""
    mask = labels != IGNORE
    log_p = torch.log_softmax(teacher[:, :-1], dim=-1)[mask]
    log_q = torch.log_softmax(student[:, :-1], dim=-1)[mask]
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def score(dyprag: DyPRAG, hooks: AdapterHooks, docs: Sequence[_Document],
          rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean answer loss of ``docs``' examples with no adapter, PRAG's and the translator's; the mean MSE to PRAG's
    factors; the seconds per document to encode one (read its state + translate)."""
    model, spec = dyprag.model, dyprag.spec
    totals = {"loss_base": 0.0, "loss_prag": 0.0, "loss_dyprag": 0.0, "mse": 0.0}
    began = time.perf_counter()
    generated = [dyprag.encode(row) for row in rows]
    encode_seconds = (time.perf_counter() - began) / max(len(rows), 1)
    with torch.no_grad():
        for doc, adapter in zip(docs, generated, strict=True):
            for key, update in (("loss_base", None), ("loss_prag", LoraUpdate.sum(spec, [doc.target], model)),
                                ("loss_dyprag", LoraUpdate.sum(spec, [adapter], model))):
                logits = _answer_logits(model, hooks, doc.batch, update)
                totals[key] += float(torch.stack([answer_loss_sum(logits[i:i + 1], doc.batch.labels[i:i + 1]) / n
                                                  for i, n in enumerate(doc.answer_lengths)]).mean())
            totals["mse"] += float(sum(torch.nn.functional.mse_loss(adapter[k].float(), doc.target[k].cpu())
                                       for k in adapter))
    scores = {key: round(value / max(len(docs), 1), 5) for key, value in totals.items()}
    return {**scores, "documents": len(docs), "encode_seconds_per_document": round(encode_seconds, 4)}


def read_documents(sm: SpringModel, pairs: Sequence[tuple[str, Mapping[str, Any]]], store: AdapterStore,
             settings: DyPRAGSettings, show_progress: bool) -> list[_Document]:
    """Every document's state, examples (one padded batch) and PRAG target, read once before training."""
    device = _device(sm.model)
    docs = []
    progress = _progress(len(pairs), show_progress, desc="read documents", unit="doc")
    for doc_id, row in pairs:
        state = document_states(sm.model, [document_ids(sm.tokenizer, row, settings.max_document_tokens)])[0]
        examples = document_examples(sm, row, settings.max_answer_tokens)
        target = {key: value.to(device, torch.float32) for key, value in store.get(doc_id).items()}
        docs.append(_Document(doc_id, state, collate(examples, sm.pad_token_id).to(device),
                              [e.answer_length for e in examples], target))
        progress.update(1)
    progress.close()
    return docs


def hold_out(pairs: Sequence[tuple[str, Mapping[str, Any]]], fraction: float,
             seed: int) -> tuple[list[tuple[str, Mapping[str, Any]]], list[tuple[str, Mapping[str, Any]]]]:
    """``(training, held apart)``: ``round(fraction * n)`` documents drawn with ``seed`` are held apart (at least one
    when ``fraction > 0``; at least one always trains)."""
    count = min(len(pairs) - 1, max(1, round(fraction * len(pairs)))) if fraction > 0 else 0
    if fraction > 0 and count < 1:
        raise ConfigError(f"held_out {fraction} leaves no document to train on ({len(pairs)} with a PRAG adapter)")
    apart = set(random.Random(f"{seed}:held-out").sample(range(len(pairs)), count))
    return ([pair for i, pair in enumerate(pairs) if i not in apart],
            [pair for i, pair in enumerate(pairs) if i in apart])


def _order(seed: int, epoch: int, count: int) -> list[int]:
    """The documents' order in an epoch: a function of (seed, epoch) only, so a resume replays it."""
    order = list(range(count))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def _device(model: Any) -> torch.device:
    return model.get_input_embeddings().weight.device


def _store_record(store: AdapterStore) -> dict[str, Any]:
    return {"folder": store.folder.name, "documents": len(store), "index": store.manifest.get("index"),
            "encoding": store.manifest.get("encoding")}


# ----- checkpoints --------------------------------------------------------------------------------------------


def _save_checkpoint(out: Path, record: dict[str, Any], translator: ParameterTranslator, optimizer: Any, step: int,
                     seconds: float, sums: list[dict[str, float]]) -> None:
    """``checkpoints/step-N``, complete or absent (written in a scratch folder, then renamed); keeps the last two."""
    folder = out / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final, scratch = folder / f"step-{step:07d}", folder / f".tmp-step-{step:07d}-{os.getpid()}"
    scratch.mkdir()
    try:
        save_state(scratch, {"step": step, "seconds": seconds, "record": record, "epoch_sums": sums,
                             "translator": translator.state_dict(), "optimizer": optimizer.state_dict()})
        if final.exists():
            shutil.rmtree(final)
        os.replace(scratch, final)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    for old in sorted(folder.glob("step-*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)


def _restore(out: Path, record: dict[str, Any], translator: ParameterTranslator,
             optimizer: Any) -> tuple[int, float, list[dict[str, float]]]:
    """Load the newest checkpoint into the run (refused when its settings, store or documents differ)."""
    latest = sorted((out / CHECKPOINTS).glob("step-*"))[-1]
    state = load_state(latest)
    if state.get("record") != record:
        before = state.get("record") or {}
        changed = [key for key in record if before.get(key) != record[key]]
        raise ConfigError(f"--resume with other {', '.join(changed) or 'inputs'} than the checkpoint in {latest}; "
                          "resume with the original settings, store and augmented file")
    try:
        translator.load_state_dict(state["translator"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"]), float(state.get("seconds", 0.0)), list(state["epoch_sums"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{latest / STATE_JSON} does not fit this run ({exc}); delete {latest} to resume from "
                              "the checkpoint before it") from exc


# ----- encoding ----------------------------------------------------------------------------------------------


@dataclass
class EncodeReport:
    encoded: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def seconds_per_document(self) -> float:
        return self.seconds / self.encoded if self.encoded else 0.0


def encode_corpus(dyprag: DyPRAG, corpus: Sequence[Mapping[str, Any]], store_folder: str | Path, *,
                  model_name: str, documents_per_shard: int = 64, process: tuple[int, int] = (0, 1),
                  show_progress: bool = True) -> EncodeReport:
    """The translator's adapter for every corpus row (``{"id", "title", "text"}``) the store at ``store_folder``
    lacks, written in shards of ``documents_per_shard`` (a rerun resumes; a killed run loses at most one shard).
    The adapters are those ``DyPRAGAdapters`` makes on the fly, bit for bit. ``process``: ``(index, count)`` of
    this process among several encoding into the same store (``spring_train.sharding``); it takes its share."""
    from spring_train.sharding import share

    store_folder = Path(store_folder)
    recorded = encoding_record(dyprag)
    store = AdapterStore.open_or_create(store_folder, dyprag.model, dyprag.spec, base_model_name=model_name,
                                        model_name=model_name, encoding=recorded)
    if store.manifest.get("encoding") != recorded:
        method = (store.manifest.get("encoding") or {}).get("method")
        raise ArtifactError(f"{store_folder} was filled by another encoder ({method}, or another translator); "
                            "encode into a new --out")
    mine = share(corpus, *process)
    todo = [row for row in mine if str(row["id"]) not in store]
    report = EncodeReport(skipped=len(mine) - len(todo))
    progress = _progress(len(todo), show_progress, desc="encode", unit="doc")
    began = time.perf_counter()
    for start in range(0, len(todo), documents_per_shard):
        chunk = todo[start:start + documents_per_shard]
        store.add({str(row["id"]): dyprag.encode(row) for row in chunk})
        report.encoded += len(chunk)
        progress.update(len(chunk))
    progress.close()
    report.seconds = time.perf_counter() - began
    return report
