"""The training loop behind ``spring-rag train``: one readable loop on Hugging Face Accelerate.

The same code runs on a CPU, on one GPU and under ``accelerate launch`` on many. Each optimizer step reads a
global batch from the seeded epoch plan, draws ``k`` (scalable training), splits the batch into micro-batches
(gradient accumulation), and logs loss, tokens/s and the learning rate. With N processes each takes every N-th
example of the global batch; the summed answer loss is divided by the answer tokens of the whole global batch and
the gradients are summed across processes, so N processes give the step one process gives (up to float rounding).
Only the main process writes the log, the checkpoints and the artifact. Checkpoints hold only the trained
parameters plus optimizer, scheduler and RNG state, as safetensors + JSON (never a pickle, so loading one runs no
code), with the data files' SHA-256; they are written atomically, and ``resume=True`` continues exactly where the
last one stopped, on the same data. Ctrl-C saves a checkpoint and stops cleanly.

Example:
    >>> from spring_train.config import TrainConfig
    >>> from spring_train.trainer import train
    >>> result = train(TrainConfig(model="./my-llama", data=["train.jsonl"], corpus="corpus.jsonl", out="run-tokens",
    ...                            n=10, lr=1e-3, max_steps=2, batch_size=2, precision="fp32"), show_progress=False)
    training spring: 640 trainable parameters, 12 examples per epoch, 2 steps of 2, precision fp32
    >>> result.steps, result.trainable_parameters          # two optimizer steps on 10 x 64 token parameters
    (2, 640)
    >>> sorted(path.name for path in result.artifact.iterdir())
    ['spring.json', 'tokens.safetensors', 'train_log.jsonl']
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spring_core.artifacts.manifest import atomic_write_bytes
from spring_core.errors import DataError, SpringError
from spring_core.model.loading import load_model
from spring_core.model.spring_model import SpringModel
from spring_core.prompts.templates import TEMPLATES
from spring_train.batching import Example, build_example, collate
from spring_train.checkpoint import (
    CHECKPOINTS,
    STATE_JSON,
    CheckpointError,
    check_output_folder,
    load_state,
    save_state,
)
from spring_train.config import ConfigError, TrainConfig, template_names
from spring_train.data import (
    DataSource,
    EpochPlan,
    attach_retrieved,
    load_sources,
    open_retriever,
    require_passages,
    sample_passages,
)
from spring_train.methods import TrainTarget, build_target

CACHE = "cache"  # the retrieval store built from --corpus
LOG_FILE = "train_log.jsonl"
LEGACY_STATE_FILE = "trainer_state.pt"  # the old pickle format: refused, never loaded


class TrainingInterrupted(SpringError):
    """Training stopped on Ctrl-C after saving a checkpoint; ``--resume`` continues it."""


class TrainingDiverged(SpringError):
    """The loss or the trained parameters stopped being usable numbers (NaN, infinite, or tokens far beyond any
    embedding): the run stops before the next checkpoint, writes no artifact and keeps the earlier checkpoints."""


@dataclass
class TrainResult:
    """What a finished run produced."""

    artifact: Path
    steps: int
    seconds: float
    final_loss: float
    trainable_parameters: int


def choose_precision(precision: str) -> str:
    """``auto``: bf16 autocast on GPUs that support it, else fp32."""
    if precision != "auto":
        return precision
    # On CPUs, bf16 autocast measured slower than fp32 for SmolLM2 forward+backward (torch 2.13, AVX512-BF16
    # without AMX), so "auto" keeps fp32 there; pass --precision bf16 to use it anyway.
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def train(config: TrainConfig, *, resume: bool = False, show_progress: bool = True,
          on_step: Callable[[dict[str, Any]], None] | None = None, allow_data_change: bool = False) -> TrainResult:
    """Train ``config.method`` and write the artifact folder ``config.out``; see the module docstring.

    A resume whose data files differ from the checkpoint's (by SHA-256) is refused unless ``allow_data_change``.
    """
    from accelerate import Accelerator

    out = Path(config.out)
    check_output_folder(out, resume, rewritable=(CACHE, LOG_FILE))
    mixed = choose_precision(config.precision)
    # Autocast is applied here rather than through Accelerator(mixed_precision=...), whose process-wide state
    # cannot change between two runs in one process.
    accelerator = Accelerator()
    _check_launch(accelerator)
    autocast = torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=mixed == "bf16")
    _seed_everything(config.seed)

    sources = load_sources(config.data)
    with accelerator.main_process_first():  # the main process builds the store in OUT/cache, the others read it
        retriever = open_retriever(corpus=config.corpus, store=config.store, backend=config.retriever,
                                   cache_dir=out / CACHE)
    if retriever is not None:
        attach_retrieved(sources, retriever, config.max_passages)
    require_passages(sources)
    plan = EpochPlan(sources, config.seed)
    data_digests = [s.describe() for s in sources]
    if resume:  # settings and data are checked before the model loads, so a refused resume costs nothing
        _check_resume(_latest_state(out), config, data_digests, allow_data_change)

    model, tokenizer = load_model(config.model, device=str(accelerator.device), dtype=torch.float32)
    target = build_target(config, model, tokenizer)
    target.to(accelerator.device)  # e.g. --init-tokens read onto the CPU (accelerator.prepare placed it before)
    # What turns rows into ids: for SPRING the target's own SpringModel, which reads its trainable table.
    encoder = target.spring if config.trains_tokens else SpringModel(target.model, tokenizer, layout=config.layout)
    _preflight(sources, encoder, config, getattr(model.config, "max_position_embeddings", None))
    steps_per_epoch = math.ceil(plan.size / config.batch_size)
    total_steps = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
    trainable = [p for p in target.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then_linear(config.warmup_ratio, total_steps))

    start_step, seconds_before = _restore(out, target, optimizer, scheduler) if resume else (0, 0.0)
    # The target is not wrapped in DistributedDataParallel: DDP averages per-process means (wrong weights when the
    # processes' slices hold different numbers of answer tokens) and hangs when a process gets no example (a global
    # batch smaller than the process count). _sum_gradients below does the exact reduction instead.
    optimizer = accelerator.prepare(optimizer)
    _same_start_everywhere(accelerator, trainable)
    log = _TrainLog(out / LOG_FILE, keep_until=start_step) if accelerator.is_main_process else None
    progress = _progress(total_steps, start_step, show_progress and accelerator.is_local_main_process)
    accelerator.print(f"training {config.method}: {target.trainable_count():,} trainable parameters, "
                      f"{plan.size:,} examples per epoch, {total_steps:,} steps of {config.batch_size}, "
                      f"precision {mixed}")
    # `seconds` in the manifest covers the whole run: the time before the checkpoint plus this part.
    started, last_loss, completed = time.perf_counter() - seconds_before, float("nan"), start_step
    try:
        for step in range(start_step, total_steps):
            step_started = time.perf_counter()
            k = _draw_k(config, step)
            batch = _global_batch(plan, encoder, config, step, steps_per_epoch, k)
            # Similar lengths share a micro-batch, so less padding is computed; the summed loss is order-free.
            mine = sorted(batch[accelerator.process_index::accelerator.num_processes], key=lambda e: len(e.input_ids))
            micro = config.micro_batch_size
            chunks = [collate(mine[i:i + micro], encoder.pad_token_id) for i in range(0, len(mine), micro)]
            # The loss is the mean over the answer tokens of the whole global batch, whichever process holds them.
            answer_tokens, tokens = _sum_across_processes(
                accelerator, [sum(c.answer_tokens for c in chunks), sum(c.real_tokens for c in chunks)])
            answer_tokens = max(answer_tokens, 1)
            loss_total = 0.0
            for chunk in chunks:
                with autocast:
                    chunk = chunk.to(accelerator.device)
                    loss = target(chunk.input_ids, chunk.attention_mask, chunk.labels) / answer_tokens
                accelerator.backward(loss)
                loss_total += float(loss.detach())
            if accelerator.num_processes > 1:
                _sum_gradients(accelerator, trainable)
                (loss_total,) = _sum_across_processes(accelerator, [loss_total])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            last_loss, completed = loss_total, step + 1
            if not math.isfinite(loss_total):  # checked before the log, which holds numbers only
                _diverged(out, config, completed, total_steps, f"the loss is {loss_total}")
            seconds = time.perf_counter() - step_started
            record = {"step": completed, "epoch": round(completed / steps_per_epoch, 4), "loss": round(last_loss, 5),
                      "k": k if config.trains_tokens else None, "lr": scheduler.get_last_lr()[0],
                      "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 3)}
            if log is not None:
                log.write(record)
            progress.update(1)
            progress.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}", k=k)
            _check_trained(out, config, target, completed, total_steps)  # before a checkpoint could keep it
            if completed % config.checkpoint_every == 0 and completed < total_steps:
                _save_checkpoint(out, config, target, optimizer, scheduler, completed, accelerator,
                                 data=data_digests, seconds=time.perf_counter() - started)
            if on_step is not None:
                on_step(record)
    except KeyboardInterrupt:
        _save_checkpoint(out, config, target, optimizer, scheduler, completed, accelerator,
                         data=data_digests, seconds=time.perf_counter() - started)
        progress.close()
        raise TrainingInterrupted(
            f"interrupted after step {completed} of {total_steps}; a checkpoint is saved in {out / CHECKPOINTS}. "
            "Run the same command with --resume to continue."
        ) from None
    except BaseException:  # e.g. a diverged run or a full disk: the bar ends its line before the error is printed
        progress.close()
        raise
    progress.close()
    seconds = time.perf_counter() - started
    summary = {"steps": total_steps, "seconds": round(seconds, 1), "final_loss": round(last_loss, 5),
               "trainable_parameters": target.trainable_count(), "precision": mixed,
               "processes": accelerator.num_processes}
    _check_trained(out, config, target, completed, total_steps)  # e.g. a resume from a checkpoint of the last step
    if accelerator.is_main_process:
        target.export(out, training={**config.record(), **summary},
                      data_sources=data_digests + _corpus_source(config))
        # Only now: a failed export (a full disk) leaves the checkpoints to --resume from.
        if not config.keep_checkpoints:
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
            shutil.rmtree(out / CACHE, ignore_errors=True)
    accelerator.wait_for_everyone()
    return TrainResult(out, total_steps, seconds, last_loss, target.trainable_count())


def _check_trained(out: Path, config: TrainConfig, target: TrainTarget, step: int, total_steps: int) -> None:
    """Stop with ``TrainingDiverged`` when the trained parameters fail the checks their artifact's loader applies.
    Every process holds the same parameters, so all of them stop together."""
    reason = target.divergence()
    if reason is not None:
        _diverged(out, config, step, total_steps, reason)


def _diverged(out: Path, config: TrainConfig, step: int, total_steps: int, reason: str) -> None:
    kept = sorted((out / CHECKPOINTS).glob("step-*"))
    where = (f"the checkpoints up to {kept[-1].name}, written before it, are kept in {out / CHECKPOINTS}; "
             "start again in another --out" if kept else "start again")
    raise TrainingDiverged(
        f"training diverged at step {step} of {total_steps}: {reason}. No artifact was written; {where} with a "
        f"lower --lr (this run: {config.lr:g}; try {config.lr / 10:g} or less) or a longer --warmup-ratio "
        f"(this run: {config.warmup_ratio:g})")


def _check_launch(accelerator: Any) -> None:
    """Refuse launches in which the processes would not train one run together."""
    from accelerate.utils import DistributedType

    launched = os.environ.get("WORLD_SIZE", "1")
    if launched.isdigit() and int(launched) != accelerator.num_processes:
        raise ConfigError(
            f"launched as {launched} processes, but Accelerate set up {accelerator.num_processes} "
            f"({accelerator.distributed_type.value}): each would train alone and write the same --out. Without a "
            "GPU, set ACCELERATE_USE_CPU=1 for `accelerate launch --multi_gpu` or torchrun")
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP, DistributedType.MEGATRON_LM):
        raise ConfigError(f"{accelerator.distributed_type.value} is not supported: the trainer runs plain data "
                          "parallel (the trained parameters are small); launch without DeepSpeed, FSDP or Megatron")


def _sum_across_processes(accelerator: Any, values: list[Any]) -> list[Any]:
    """Each value summed over all processes (the values themselves in a single process)."""
    if accelerator.num_processes == 1:
        return list(values)
    total = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), reduction="sum")
    return [round(x) if isinstance(v, int) else x for v, x in zip(values, total.tolist(), strict=True)]


def _sum_gradients(accelerator: Any, params: list[torch.Tensor]) -> None:
    """Replace every gradient by its sum over the processes (one all-reduce); a process without examples adds 0."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    total = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="sum")
    for param, part in zip(params, total.split([p.numel() for p in params]), strict=True):
        param.grad = part.view_as(param)


def _same_start_everywhere(accelerator: Any, params: list[torch.Tensor]) -> None:
    """Every process starts from the main process's trained parameters (as DDP would broadcast them)."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast

    with torch.no_grad():
        for param in params:
            param.copy_(broadcast(param.detach().clone(), from_process=0))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _warmup_then_linear(warmup_ratio: float, total_steps: int) -> Callable[[int], float]:
    warmup = max(1, round(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _draw_k(config: TrainConfig, step: int) -> int:
    """Scalable training: the step's ``k``, a pure function of (seed, step) so resuming redraws it."""
    return sample_k(config, np.random.default_rng([config.seed, step, 1]))


def sample_k(config: TrainConfig, rng: np.random.Generator) -> int:
    """``k`` in [1, n]: uniform (the paper), or log-uniform, which trains small blocks (k = 1, 2, ..) more often."""
    if config.k_distribution == "uniform":
        return int(rng.integers(1, config.n + 1))
    return min(config.n, int(math.exp(rng.uniform(0.0, math.log(config.n + 1)))))


def _global_batch(plan: EpochPlan, encoder: SpringModel, config: TrainConfig, step: int, steps_per_epoch: int,
                  k: int) -> list[Example]:
    epoch, position = divmod(step, steps_per_epoch)
    order = plan.epoch(epoch)  # cached: computed once per epoch
    chosen = order[position * config.batch_size:(position + 1) * config.batch_size]
    examples = []
    for offset, pair in enumerate(chosen):
        row = plan.row(pair)
        rng = np.random.default_rng([config.seed, epoch, position * config.batch_size + offset])
        passages = sample_passages(row["passages"], min_count=config.min_passages, max_count=config.max_passages,
                                   rng=rng)
        row_k = 0 if not config.trains_tokens else (
            sample_k(config, rng) if config.k_sampling == "sample" else k)
        names = template_names(config.templates)
        template = TEMPLATES[names[int(rng.integers(len(names)))]] if names else None
        try:
            examples.append(build_example(encoder, question=row["question"], passages=passages,
                                          answer=row["answers"][0], k=row_k,
                                          max_answer_tokens=config.max_answer_tokens, template=template))
        except SpringError as exc:  # _preflight tries every row first; this names the row should one still fail
            raise DataError(f"{plan.sources[pair[0]].path}: row {row['id']!r}: {exc}") from exc
    return examples


def _preflight(sources: list[DataSource], encoder: SpringModel, config: TrainConfig, context: int | None) -> None:
    """Before step 1, build every row's largest prompt (all its first ``max_passages`` passages, the full block),
    so that what would stop a step (a prompt the encoder refuses, a prompt longer than the model's context)
    stops the run now, naming the file and row."""
    k = config.n if config.trains_tokens else 0
    templates = [TEMPLATES[name] for name in template_names(config.templates)]
    wording = max((sum(len(text.encode("utf-8")) for _, text in t.turns) for t in templates), default=0)
    for source in sources:
        for row in source.rows:
            passages = list(row["passages"][:config.max_passages])
            try:
                parts = encoder.prompt_parts(row["question"], passages, k)
                size = len((parts.before + parts.after + row["answers"][0]).encode("utf-8")) + wording
                # A token spans at least one byte, so only prompts longer in bytes than the context need counting.
                if context and size + k + 16 > context:  # 16: BOS, EOS, template ids
                    tokens = max(len(build_example(encoder, question=row["question"], passages=passages,
                                                   answer=row["answers"][0], k=k, template=template,
                                                   max_answer_tokens=config.max_answer_tokens).input_ids)
                                 for template in templates or [None])
                    if tokens > context:
                        raise DataError(
                            f"its prompt with {config.max_passages} passages is {tokens:,} tokens, longer than the "
                            f"model's context of {context:,}; shorten its passages or lower --max-passages")
            except SpringError as exc:
                raise DataError(f"{source.path}: row {row['id']!r}: {exc}") from exc


def _corpus_source(config: TrainConfig) -> list[dict[str, Any]]:
    if config.corpus:
        return [{"corpus": Path(config.corpus).name, "retriever": config.retriever, "passages": config.max_passages}]
    if config.store:
        return [{"store": Path(config.store).name, "passages": config.max_passages}]
    return []


# ----- checkpoints --------------------------------------------------------------------------------------------


def _save_checkpoint(out: Path, config: TrainConfig, target: TrainTarget, optimizer: Any, scheduler: Any,
                     step: int, accelerator: Any, *, data: list[dict[str, Any]], seconds: float) -> None:
    """Write ``checkpoints/step-N`` atomically: tensors in safetensors, the rest in JSON (no pickle)."""
    if not accelerator.is_main_process:
        return
    folder = out / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:07d}"
    for stale in folder.glob(".tmp-step-*"):  # this run's last attempt, or one a killed run left behind
        shutil.rmtree(stale, ignore_errors=True)
    scratch = folder / f".tmp-step-{step:07d}-{os.getpid()}"
    state = {
        "step": step,
        "seconds": seconds,
        "config": config.to_dict(),
        "data": data,
        "trainable": target.trainable_state(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
    }
    scratch.mkdir()
    try:
        save_state(scratch, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(scratch, final)  # a checkpoint folder exists complete or not at all
    except BaseException:  # e.g. a full disk: the earlier checkpoints stay, and so does the free space
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    for old in sorted(folder.glob("step-*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)


def _latest_state(out: Path) -> dict[str, Any]:
    """The newest checkpoint's state; a pickle checkpoint of an older spring-rag is refused unread."""
    latest = sorted((out / CHECKPOINTS).glob("step-*"))[-1]
    if not (latest / STATE_JSON).exists() and (latest / LEGACY_STATE_FILE).exists():
        raise ConfigError(
            f"{latest / LEGACY_STATE_FILE} is a pickle checkpoint of an older spring-rag; a pickle can run code when "
            "loaded, so it is not read. Start the run again in a new --out"
        )
    state = load_state(latest)
    state["folder"] = latest
    return state


def _check_resume(state: dict[str, Any], config: TrainConfig, data: list[dict[str, Any]],
                  allow_data_change: bool) -> None:
    """Refuse a resume whose settings or data files differ from the checkpoint's."""
    latest = state["folder"]
    try:
        mismatches = config.resume_mismatches(state["config"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{latest / STATE_JSON} lacks a field ({exc}); delete {latest} to resume from the "
                              "checkpoint before it") from exc
    if mismatches:
        raise ConfigError(f"--resume with settings that differ from the checkpoint in {latest}: "
                          + "; ".join(mismatches) + ". Resume with the original settings.")
    changed = _changed_data(state.get("data"), data)
    if changed and not allow_data_change:
        raise ConfigError(f"--resume: {changed} since the checkpoint in {latest}; resume with the original data, "
                          "or pass --allow-data-change to continue on the new data")


def _restore(out: Path, target: TrainTarget, optimizer: Any, scheduler: Any) -> tuple[int, float]:
    """Load the latest checkpoint into the run; returns its step and the seconds trained before it."""
    state = _latest_state(out)
    try:
        target.load_trainable_state(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        return int(state["step"]), float(state.get("seconds", 0.0))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{state['folder']} does not fit this run ({exc}); delete it to resume from the "
                              "checkpoint before it") from exc


def _changed_data(recorded: Any, current: list[dict[str, Any]]) -> str:
    """Which data file differs from the checkpoint's record ('' when none does)."""
    if not isinstance(recorded, list):
        return "the checkpoint records no data digests, so the data cannot be checked"
    before = {entry.get("file"): entry.get("sha256") for entry in recorded if isinstance(entry, dict)}
    for entry in current:
        if entry["file"] not in before:
            return f"the data file {entry['file']} was not part of the run"
        if before[entry["file"]] != entry["sha256"]:
            return f"the data file {entry['file']} changed (SHA-256 {entry['sha256'][:12]}, was " \
                   f"{str(before[entry['file']])[:12]})"
    gone = sorted(set(before) - {entry["file"] for entry in current})
    return f"the data file {gone[0]} is no longer passed" if gone else ""


class _TrainLog:
    """``train_log.jsonl``: one line per step; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, keep_until: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line).get("step", 0) <= keep_until:
                        kept.append(line)
        # Atomically: a failed write (a full disk) must not lose the lines of the steps before the checkpoint.
        atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode("utf-8"))

    def write(self, record: dict[str, Any]) -> None:
        """Append one line, whole or not at all: a write that fails half-way is cut off again."""
        line = memoryview((json.dumps(record) + "\n").encode("utf-8"))
        with self.path.open("ab", buffering=0) as handle:
            size = handle.seek(0, os.SEEK_END)
            try:
                while line:
                    line = line[handle.write(line):]
            except OSError:
                handle.truncate(size)
                raise


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)
