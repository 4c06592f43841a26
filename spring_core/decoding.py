"""Marginal decoding over retrieved passages (RAG-Token and RAG-Sequence, Lewis et al. 2020), with or without SPRING.

Every passage ``z`` is read on its own: its prompt is ``[1] z`` + ``[r1]..[rk]`` + the question, in the model's
layout. The retriever's scores give the passage weights ``p(z|x) = softmax(scores / weight_temperature)``. All
passage prompts of a question run as one left-padded batch.

* ``rag_token`` mixes the passages at every step: ``p(y_t|x, y<t) = sum_z p(z|x) p(y_t|x, z, y<t)``; the chosen
  token is appended to every passage's sequence.
* ``rag_sequence`` decodes one greedy candidate per passage, then picks ``argmax_y sum_z p(z|x) p(y|x, z)``:
  "thorough" scores every candidate under every passage, ``fast=True`` counts only the passages that produced it.

Both run on transformers' ``generate`` (one row per passage), as its own RAG models marginalise inside
``generate``: RAG-Token through a logits processor that writes the mixture's choice into every row, RAG-Sequence
as a plain batched greedy pass. Caches (the model's own ``cache_implementation``, sliding windows, Gemma 3's
hybrid cache), position ids and stop strings therefore come from the library, exactly as in ``concat`` mode.
Candidates are scored by one batched, teacher-forced scorer (``sequence_log_probs``).

Example:
    >>> from spring_core.decoding import rag_sequence, rag_token
    >>> passages = ["X was founded by Y.", "Z is a city in W."]
    >>> out = rag_token(sm, "Who founded X?", passages, scores=[12.0, 3.5], k=10)     # doctest: +SKIP
    >>> out.text, out.weights                                                           # doctest: +SKIP
    ('Y', [0.9997965693473816, 0.00020342697098385543])
    >>> best = rag_sequence(sm, "Who founded X?", passages, [12.0, 3.5], fast=True)    # doctest: +SKIP
    >>> best.candidates                                                                 # doctest: +SKIP
    [('Y', -0.41), ('Z', -7.93)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from spring_core.errors import SpringError
from spring_core.modes import MODES
from spring_core.prompts import Passage
from spring_core.usage import Usage, cut_at_stop, tokens_until_stop

if TYPE_CHECKING:  # only for annotations: this layer never imports SpringModel at run time
    from spring_core.spring_model import SpringModel

__all__ = ["MODES", "DecodingError", "MarginalGeneration", "MixtureProcessor", "optional_scores", "passage_weights",
           "rag_sequence", "rag_token", "sequence_log_probs"]
SCORE_BATCH = 16
"""How many (prompt, continuation) pairs one forward pass of the scorer reads."""


class DecodingError(SpringError):
    """Marginal decoding got inputs it cannot use (no passages, bad scores, bad settings)."""


@dataclass
class MarginalGeneration:
    """What ``rag_token`` and ``rag_sequence`` return.

    ``token_ids`` are the generated ids, the final end-of-sequence id included when there is one (as counted in
    ``usage.completion_tokens``); ``text`` is their decoding without special tokens. ``weights`` are ``p(z|x)``
    in passage order. ``candidates`` (``rag_sequence`` only) are ``(text, log p(y|x))`` best first.
    """

    text: str
    token_ids: list[int]
    weights: list[float]
    finish_reason: str = "stop"  # "stop": end of sequence; "length": max_new_tokens reached
    usage: Usage = field(default_factory=Usage)
    candidates: list[tuple[str, float]] = field(default_factory=list)


def passage_weights(scores: Sequence[float], temperature: float = 1.0) -> torch.Tensor:
    """``p(z|x) = softmax(scores / temperature)`` as float32 (computed in float64).

    Example:
        >>> passage_weights([1.0, 1.0]).tolist()
        [0.5, 0.5]
    """
    return _log_weights(scores, temperature).exp().float()


def optional_scores(scores: Sequence[float | None]) -> list[float] | None:
    """Retriever scores as passage weights: all given -> the list; none given -> ``None`` (equal weights).

    A mix of scored and unscored passages (e.g. nodes from two retrievers, one without scores) raises
    ``DecodingError``: weighing only some of them would be a guess.

    Example:
        >>> optional_scores([0.8, 0.3]), optional_scores([None, None])
        ([0.8, 0.3], None)
    """
    given = [score is not None for score in scores]
    if all(given) and given:
        return [float(score) for score in scores]  # type: ignore[arg-type]
    if not any(given):
        return None
    missing = given.index(False)
    raise DecodingError(
        f"passage {missing} has no retriever score while others have one; give every passage a score, or none "
        "(equal weights)"
    )


@torch.inference_mode()
def rag_token(sm: SpringModel, question: str, passages: Sequence[Passage], scores: Sequence[float], *, k: int = 0,
              max_new_tokens: int = 64, temperature: float = 0.0, seed: int | None = None,
              weight_temperature: float = 1.0, stop: Sequence[str] = ()) -> MarginalGeneration:
    """RAG-Token: at every step mix the passages' next-token distributions by ``p(z|x)`` and pick one token.

    ``temperature == 0`` takes the mixture's argmax; otherwise each passage's distribution is
    ``softmax(logits / temperature)`` and the token is sampled from their mixture with a local generator
    (``seed``), leaving the global RNG alone. One sequence (one beam) per question; ``stop`` strings end it.
    """
    _check_settings(max_new_tokens, temperature)
    prompts, log_w = _passage_prompts(sm, question, passages, scores, k, weight_temperature)
    generator = _generator(sm.device, seed) if temperature > 0 else None
    mixture = MixtureProcessor(log_w, temperature=temperature, generator=generator)
    rows = _generate(sm, prompts, max_new_tokens, stop, [mixture])
    return _result(sm, rows[0], log_w, prompts, k, stop)


@torch.inference_mode()
def rag_sequence(sm: SpringModel, question: str, passages: Sequence[Passage], scores: Sequence[float], *,
                 k: int = 0, max_new_tokens: int = 64, fast: bool = False, weight_temperature: float = 1.0,
                 stop: Sequence[str] = ()) -> MarginalGeneration:
    """RAG-Sequence: one greedy answer per passage, then the answer with the highest ``sum_z p(z|x) p(y|x, z)``.

    The per-passage answers come from one batched ``generate`` call. Thorough decoding (default) scores every
    distinct candidate under every passage; ``fast=True`` lets only the passages that produced a candidate count
    (the others as probability 0). All scores come from one batched, teacher-forced scorer.
    """
    _check_settings(max_new_tokens, 0.0)
    prompts, log_w = _passage_prompts(sm, question, passages, scores, k, weight_temperature)
    outputs = _generate(sm, prompts, max_new_tokens, stop, [])
    producers: dict[tuple[int, ...], list[int]] = {}
    for z, ids in enumerate(outputs):
        producers.setdefault(tuple(ids), []).append(z)
    candidates = [list(ids) for ids in producers]
    pairs = [(c, z) for c, zs in enumerate(producers.values()) for z in (zs if fast else range(len(prompts)))]
    scored = sequence_log_probs(sm, [prompts[z] for _, z in pairs], [candidates[c] for c, _ in pairs]).double()
    log_p = torch.full((len(candidates), len(prompts)), -math.inf, dtype=torch.float64)
    for (c, z), value in zip(pairs, scored.tolist(), strict=True):
        log_p[c, z] = value
    marginal = torch.logsumexp(log_w.unsqueeze(0) + log_p, dim=1)
    order = sorted(range(len(candidates)), key=lambda c: -float(marginal[c]))  # stable: earlier passage wins ties
    result = _result(sm, candidates[order[0]], log_w, prompts, k, stop)
    result.candidates = [(_text(sm, candidates[c]), float(marginal[c])) for c in order]
    return result


@torch.inference_mode()
def sequence_log_probs(sm: SpringModel, prompts: Sequence[list[int]], continuations: Sequence[list[int]], *,
                       batch_size: int = SCORE_BATCH) -> torch.Tensor:
    """``log p(continuation | prompt)`` for each pair, summed over the continuation's tokens (float32, on CPU).

    Prompts may hold virtual ids (``>= sm.vocab_rows``); continuations only real ids. Pairs run as left-padded
    forward passes of ``batch_size`` rows, position ids following the mask; the results equal scoring the pairs
    one at a time, to float tolerance.
    """
    prompts, continuations = [list(p) for p in prompts], [list(c) for c in continuations]
    _check_pairs(sm, prompts, continuations)
    if not prompts:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat([_score_chunk(sm, prompts[i:i + batch_size], continuations[i:i + batch_size])
                      for i in range(0, len(prompts), batch_size)])


class MixtureProcessor(LogitsProcessor):
    """Writes the RAG-Token choice into every row: ``generate`` reads one row per passage, and this processor
    mixes the rows' next-token distributions by the passage weights, picks one token (argmax, or a draw from a
    private generator) and makes it the only choice of every row, so all rows extend by the same token.

    Example:
        >>> processor = MixtureProcessor(torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64)))
        >>> scores = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
        >>> processor(torch.zeros((2, 1), dtype=torch.long), scores).argmax(-1).tolist()
        [2, 2]
    """

    def __init__(self, log_weights: torch.Tensor, *, temperature: float = 0.0,
                 generator: torch.Generator | None = None):
        self.log_weights = log_weights.double()
        self.temperature = temperature
        self.generator = generator

    def mixture(self, scores: torch.Tensor) -> torch.Tensor:
        """``log sum_z p(z|x) softmax(scores_z / T)`` over the vocabulary ``[V]`` (float64)."""
        scaled = scores.double() / self.temperature if self.temperature > 0 else scores.double()
        log_w = self.log_weights.to(scaled.device).unsqueeze(1)
        return torch.logsumexp(log_w + scaled.log_softmax(-1), dim=0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mixture = self.mixture(scores)
        if self.generator is None:
            token = mixture.argmax()
        else:
            token = torch.multinomial(mixture.exp(), 1, generator=self.generator)[0]
        chosen = torch.full_like(scores, -math.inf)
        chosen[:, token] = 0.0
        return chosen


# ----- helpers -----------------------------------------------------------------------------------------------


def _generate(sm: SpringModel, prompts: list[list[int]], max_new_tokens: int, stop: Sequence[str],
              processors: list[LogitsProcessor]) -> list[list[int]]:
    """Greedy ``generate`` over the left-padded prompts; each row's new ids, cut after its first eos id or at
    the end of its first stop string."""
    inputs = sm.model_inputs(prompts)
    eos = sorted(sm.eos_ids())
    stop = [s for s in stop if s]
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos or None,
                              pad_token_id=sm.pad_token_id, stop_strings=stop or None)
    kwargs: dict[str, Any] = {"generation_config": config, "logits_processor": LogitsProcessorList(processors)}
    if stop:
        kwargs["tokenizer"] = sm.tokenizer  # generate() matches stop strings against token ids with it
    output = sm.model.generate(**inputs, **kwargs)
    if "input_ids" in inputs:  # generate() returns prompt + new tokens for input_ids, only new ones for embeds
        output = output[:, inputs["input_ids"].shape[1]:]
    rows = []
    for row in output.tolist():
        ends = [i for i, token in enumerate(row) if token in eos]
        row = row[:ends[0] + 1] if ends else row
        if stop and cut_at_stop(_text(sm, row), stop)[1]:
            row = row[:tokens_until_stop(row, stop, lambda ids: _text(sm, ids))]
        rows.append(row)
    return rows


def _score_chunk(sm: SpringModel, prompts: list[list[int]], continuations: list[list[int]]) -> torch.Tensor:
    longest = max((len(c) for c in continuations), default=0)
    if longest == 0:
        return torch.zeros(len(prompts), dtype=torch.float32)
    inputs = sm.model_inputs([p + c for p, c in zip(prompts, continuations, strict=True)], positions=True)
    keep = longest + 1  # the last position predicts nothing; the one before the first continuation token does
    log_probs = sm.model(**inputs, logits_to_keep=keep).logits[:, -keep:].float().log_softmax(-1)
    rows, positions, tokens, valid = _gather_index(continuations, keep)
    picked = log_probs[rows.to(log_probs.device), positions.to(log_probs.device), tokens.to(log_probs.device)]
    return picked.cpu().masked_fill(~valid, 0.0).sum(dim=1)


def _log_weights(scores: Sequence[float], temperature: float) -> torch.Tensor:
    """``log p(z|x)`` in float64, after checking the scores and the temperature."""
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError) as exc:
        raise DecodingError(f"passage scores must be numbers, one per passage ({exc})") from exc
    if not values:
        raise DecodingError("no passage scores were given; pass one retrieval score per passage")
    bad = [i for i, s in enumerate(values) if not math.isfinite(s)]
    if bad:
        raise DecodingError(
            f"passage score at index {bad[0]} is {values[bad[0]]}; scores must be finite numbers "
            "(check the retriever's output, or drop that passage)"
        )
    try:
        usable = math.isfinite(float(temperature)) and float(temperature) > 0
    except (TypeError, ValueError):
        usable = False
    if not usable:
        raise DecodingError(
            f"the weight temperature must be a finite number > 0, got {temperature}; "
            "1.0 uses the retriever's scores as they are, smaller values sharpen the weights"
        )
    return torch.log_softmax(torch.tensor(values, dtype=torch.float64) / temperature, dim=0)


def _check_settings(max_new_tokens: int, temperature: float) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise DecodingError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise DecodingError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")


def _passage_prompts(sm: SpringModel, question: str, passages: Sequence[Passage], scores: Sequence[float], k: int,
                     weight_temperature: float) -> tuple[list[list[int]], torch.Tensor]:
    """One encoded prompt per passage (``[1] passage``, ``k`` virtual tokens, question) and ``log p(z|x)``."""
    passages, scores = list(passages), list(scores)
    if not passages:
        raise DecodingError("marginal decoding needs at least one passage; retrieve some, or call sm.generate")
    if len(scores) != len(passages):
        raise DecodingError(
            f"got {len(passages)} passages but {len(scores)} scores; pass exactly one retrieval score per passage"
        )
    log_w = _log_weights(scores, weight_temperature)
    k = sm.check_k(k)
    return [sm.encode(sm.prompt_parts(question, [passage], k)) for passage in passages], log_w


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A private RNG for sampling: seeded when asked, else from fresh entropy; the global RNG is never touched."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _check_pairs(sm: SpringModel, prompts: list[list[int]], continuations: list[list[int]]) -> None:
    if len(prompts) != len(continuations):
        raise DecodingError(
            f"got {len(prompts)} prompts but {len(continuations)} continuations; pass one continuation per prompt"
        )
    top = sm.vocab_rows + sm.n
    for i, (prompt, continuation) in enumerate(zip(prompts, continuations, strict=True)):
        if not prompt:
            raise DecodingError(f"prompt {i} is empty; a continuation needs at least one prompt token to follow")
        if any(not 0 <= t < top for t in prompt):
            raise DecodingError(f"prompt {i} holds an id outside 0..{top - 1} (base vocabulary plus virtual tokens)")
        if any(not 0 <= t < sm.vocab_rows for t in continuation):
            raise DecodingError(
                f"continuation {i} holds an id outside the base vocabulary 0..{sm.vocab_rows - 1}; "
                "virtual tokens can be read but never generated or scored"
            )


def _gather_index(continuations: list[list[int]], keep: int) -> tuple[torch.Tensor, ...]:
    """Index tensors ``[pairs, longest]`` that pick each continuation token's log-prob from the kept logits."""
    longest = keep - 1
    positions = torch.zeros((len(continuations), longest), dtype=torch.long)
    tokens = torch.zeros_like(positions)
    valid = torch.zeros_like(positions, dtype=torch.bool)
    for row, ids in enumerate(continuations):
        start = keep - 1 - len(ids)  # kept position that predicts the first continuation token
        positions[row, :len(ids)] = torch.arange(start, start + len(ids))
        tokens[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        valid[row, :len(ids)] = True
    rows = torch.arange(len(continuations)).unsqueeze(1).expand_as(positions)
    return rows, positions, tokens, valid


def _text(sm: SpringModel, ids: list[int]) -> str:
    return sm.tokenizer.decode(ids, skip_special_tokens=True)


def _result(sm: SpringModel, ids: list[int], log_w: torch.Tensor, prompts: list[list[int]], k: int,
            stop: Sequence[str]) -> MarginalGeneration:
    text, stopped = cut_at_stop(_text(sm, ids), [s for s in stop if s])
    finish = "stop" if stopped or (ids and ids[-1] in sm.eos_ids()) else "length"
    usage = Usage(
        prompt_tokens=sum(len(p) - k for p in prompts),
        completion_tokens=len(ids),
        virtual_tokens=k * len(prompts),
    )
    weights = log_w.exp().float().tolist()
    return MarginalGeneration(text=text, token_ids=list(ids), weights=weights, finish_reason=finish, usage=usage)
