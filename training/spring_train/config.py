"""TrainConfig: every setting of one training run, recorded in the checkpoint and in the artifact's manifest.

Example:
    >>> config = TrainConfig(method="spring", data=["train.jsonl"], out="my-tokens", n=50, lr=1e-3)
    >>> config.micro_batch_size
    8
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spring_core.errors import SpringError
from spring_core.model.loading import DEFAULT_MODEL
from spring_core.prompts.templates import TEMPLATE_SETS

METHODS = ("spring", "lora", "prefix", "spring+")
K_SAMPLING = ("step", "sample")
K_DISTRIBUTIONS = ("uniform", "log-uniform")
PRECISIONS = ("auto", "bf16", "fp32")
MAX_BLOCK_TOKENS = 4096
"""The most virtual tokens (``--n``) or prefix tokens (``--prefix-tokens``) a run trains: each one takes a position
of every prompt's context and a row of hidden-size parameters (the paper trains 50), so a larger count is a typo
that would otherwise end in an out-of-memory error after the model loads."""
SEED_LIMIT = 2**32  # numpy's seeds are 32-bit

# Settings that change what a step computes: a resumed run must match the checkpoint on all of them.
RESUME_KEYS = (
    "method", "model", "data", "corpus", "store", "retriever", "n", "k_sampling", "k_distribution", "min_passages",
    "max_passages", "layout", "templates", "init_text", "init_tokens", "lr", "warmup_ratio", "epochs", "max_steps",
    "batch_size", "grad_accum", "seed", "lora_rank", "lora_alpha", "lora_targets", "prefix_tokens", "base_lora",
    "max_answer_tokens",
)


def template_names(templates: str) -> tuple[str, ...]:
    """The RAG templates a ``--templates`` setting draws from (empty: the model's own layout)."""
    return TEMPLATE_SETS[templates]


class ConfigError(SpringError):
    """A training setting is out of range or inconsistent with the others."""


@dataclass
class TrainConfig:
    """Settings of a ``spring-rag train`` run (defaults follow the SPRING paper where it gives one).

    ``data`` entries are ``"file.jsonl"`` or ``"file.jsonl:weight"``: a weight of 2 reads that file twice per
    epoch, 0.5 a random half of it. Passages come from each row's ``passages`` or, with ``corpus``/``store``,
    from the retriever (the paper trains on retrieved passages).
    """

    method: str = "spring"
    model: str = DEFAULT_MODEL
    data: list[str] = field(default_factory=list)
    out: str = ""
    corpus: str | None = None
    store: str | None = None
    retriever: str = "bm25"
    n: int = 50
    k_sampling: str = "step"
    k_distribution: str = "uniform"
    min_passages: int = 1
    max_passages: int = 5
    layout: str = "raw"
    templates: str = "spring"
    init_text: str | None = None
    init_tokens: str | None = None
    lr: float = 1e-4
    warmup_ratio: float = 0.1
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    seed: int = 42
    precision: str = "auto"
    max_answer_tokens: int = 32
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    prefix_tokens: int = 50
    base_lora: str | None = None
    checkpoint_every: int = 50
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not self.data:
            raise ConfigError("no training data: pass at least one --data FILE.jsonl[:WEIGHT]")
        if not self.out:
            raise ConfigError("no output folder: pass --out FOLDER")
        if self.k_sampling not in K_SAMPLING:
            raise ConfigError(f"--k-sampling must be one of {', '.join(K_SAMPLING)}, got {self.k_sampling!r}")
        if self.k_distribution not in K_DISTRIBUTIONS:
            raise ConfigError(f"--k-distribution must be one of {', '.join(K_DISTRIBUTIONS)}, "
                              f"got {self.k_distribution!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.layout not in ("raw", "chat"):
            raise ConfigError(f"--layout must be raw or chat, got {self.layout!r}")
        if self.templates not in TEMPLATE_SETS:
            raise ConfigError(f"--templates must be one of {', '.join(TEMPLATE_SETS)}, got {self.templates!r}")
        if self.corpus and self.store:
            raise ConfigError("pass either --corpus (a store is built from it) or --store (an existing one), not both")
        for name in ("n", "batch_size", "grad_accum", "min_passages", "max_passages", "max_answer_tokens",
                     "lora_rank", "lora_alpha", "prefix_tokens", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("n", "prefix_tokens"):
            if getattr(self, name) > MAX_BLOCK_TOKENS:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {getattr(self, name):,} is too large: each of these tokens takes a "
                    f"position of every prompt's context window and a row of trained parameters, so at most "
                    f"{MAX_BLOCK_TOKENS:,} are accepted (the paper trains 50)")
        if self.min_passages > self.max_passages:
            raise ConfigError(f"--min-passages {self.min_passages} is larger than --max-passages {self.max_passages}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"--batch-size {self.batch_size} must be a multiple of --grad-accum {self.grad_accum}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a finite positive number, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not math.isfinite(self.epochs) or (self.max_steps is None and not self.epochs > 0):
            raise ConfigError(f"--epochs must be a finite positive number, got {self.epochs}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"--seed must be an integer from 0 to 2**32 - 1 = {SEED_LIMIT - 1} (numpy's seed "
                              f"range), got {self.seed}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.method == "spring+" and not self.base_lora:
            raise ConfigError("--method spring+ trains tokens on top of a LoRA: pass --base-lora LORA_ARTIFACT")
        if self.init_tokens and not self.trains_tokens:
            raise ConfigError("--init-tokens starts virtual tokens from an artifact; use it with spring or spring+")
        if self.init_tokens and self.init_text:
            raise ConfigError("pass either --init-text or --init-tokens, not both")
        if self.method != "spring+" and self.base_lora:
            raise ConfigError("--base-lora is only used by --method spring+")

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum

    @property
    def trains_tokens(self) -> bool:
        return self.method in ("spring", "spring+")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def record(self) -> dict[str, Any]:
        """The settings as the manifest records them: file names only, so no machine's paths travel along."""
        def name(path: str | None) -> str | None:
            return Path(path).name if path else path

        record = self.to_dict()
        record.update(data=[name(p) for p in self.data], out=None, corpus=name(self.corpus),
                      store=name(self.store), base_lora=name(self.base_lora), init_tokens=name(self.init_tokens))
        return record

    def resume_mismatches(self, saved: dict[str, Any]) -> list[str]:
        """The settings that differ from a checkpoint's (``name: saved -> now``)."""
        now = self.to_dict()
        return [f"{key}: {saved.get(key)!r} -> {now[key]!r}" for key in RESUME_KEYS if saved.get(key) != now[key]]
