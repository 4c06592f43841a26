"""Marginal decoding over retrieved passages (RAG-Token and RAG-Sequence, Lewis et al. 2020), with or without SPRING.

Every passage ``z`` is read on its own: its prompt is ``[1] z`` + ``[r1]..[rk]`` + the question, in the model's
layout (``SpringModel.generate(decoding=...)`` builds them). The retriever's scores give the passage weights
``p(z|x) = softmax(scores / weight_temperature)``. All passage prompts of a question run as one left-padded batch
through the one ``Runner`` that ``stuff`` decoding uses, so the generation config, healing, stop strings,
end-of-sequence cuts and usage come from the same code.

* ``rag_token`` mixes the passages at every step: ``p(y_t|x, y<t) = sum_z p(z|x) p(y_t|x, z, y<t)``; the chosen
  token is appended to every passage's sequence (a logits processor writes the mixture's choice into every row,
  as transformers' own RAG models marginalise inside ``generate``).
* ``rag_sequence`` decodes one greedy candidate per passage, then picks ``argmax_y sum_z p(z|x) p(y|x, z)``:
  "thorough" scores every candidate under every passage, ``fast=True`` counts only the passages that produced it.
  Candidates are scored by one batched, teacher-forced scorer (``sequence_log_probs``).

Example:
    >>> sm.generate("Who founded X?", ["X was founded by Y.", "Z is a city in W."], k=10,
    ...             decoding="rag-token", scores=[12.0, 3.5], max_new_tokens=4).weights
    [0.9997965693473816, 0.00020342697098385543]
    >>> passage_weights([1.0, 1.0]).tolist()
    [0.5, 0.5]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from spring_core.errors import DecodingError
from spring_core.generation.runner import Runner
from spring_core.model.healing import Healed
from spring_core.types import Generation, GenerationSettings, PromptParts

SCORE_BATCH = 16
"""How many (prompt, continuation) pairs one forward pass of the scorer reads."""


def rag_token(runner: Runner, parts: Sequence[PromptParts], scores: Sequence[float], settings: GenerationSettings,
              *, weight_temperature: float = 1.0) -> Generation:
    """RAG-Token over one prompt per passage: at every step mix the passages' next-token distributions by
    ``p(z|x)`` and pick one token.

    ``temperature == 0`` takes the mixture's argmax; otherwise each passage's distribution is
    ``softmax(logits / temperature)`` and the token is sampled from their mixture with a local generator
    (``seed``), leaving the global RNG alone. One sequence (one beam) per question; ``stop`` strings end it.
    """
    _check_settings(settings, sampling=True)
    log_w = _log_weights(scores, weight_temperature, len(parts))
    prepared = [runner.inputs.prepare(p, settings.max_new_tokens) for p in parts]
    generator = _generator(runner.inputs.device, settings.seed) if settings.temperature > 0 else None
    mixture = MixtureProcessor(log_w, temperature=settings.temperature, generator=generator)
    greedy = GenerationSettings(**{**vars(settings), "temperature": 0.0})  # the mixture samples, not generate()
    rows = runner.generate_ids([ids for _, ids in prepared], greedy, [h for h, _ in prepared], [mixture])
    return _result(runner, rows[0], settings, parts, prepared, log_w)


def rag_sequence(runner: Runner, parts: Sequence[PromptParts], scores: Sequence[float],
                 settings: GenerationSettings, *, fast: bool = False, weight_temperature: float = 1.0) -> Generation:
    """RAG-Sequence: one greedy answer per passage, then the answer with the highest ``sum_z p(z|x) p(y|x, z)``.

    The per-passage answers come from one batched ``generate`` call. Thorough decoding (default) scores every
    distinct candidate under every passage; ``fast=True`` lets only the passages that produced a candidate count
    (the others as probability 0). All scores come from one batched, teacher-forced scorer.
    """
    _check_settings(settings, sampling=False)
    log_w = _log_weights(scores, weight_temperature, len(parts))
    prepared = [runner.inputs.prepare(p, settings.max_new_tokens) for p in parts]
    prompts = [ids for _, ids in prepared]
    outputs = runner.generate_ids(prompts, settings, [h for h, _ in prepared])
    producers: dict[tuple[int, ...], list[int]] = {}
    for z, ids in enumerate(outputs):
        producers.setdefault(tuple(ids), []).append(z)
    candidates = [list(ids) for ids in producers]
    pairs = [(c, z) for c, zs in enumerate(producers.values()) for z in (zs if fast else range(len(prompts)))]
    scored = sequence_log_probs(runner, [prompts[z] for _, z in pairs], [candidates[c] for c, _ in pairs]).double()
    log_p = torch.full((len(candidates), len(prompts)), -math.inf, dtype=torch.float64)
    for (c, z), value in zip(pairs, scored.tolist(), strict=True):
        log_p[c, z] = value
    marginal = torch.logsumexp(log_w.unsqueeze(0) + log_p, dim=1)
    order = sorted(range(len(candidates)), key=lambda c: -float(marginal[c]))  # stable: earlier passage wins ties
    result = _result(runner, candidates[order[0]], settings, parts, prepared, log_w)
    spaces = prepared[0][0].spaces
    result.candidates = [(runner.decode(candidates[c], spaces), float(marginal[c])) for c in order]
    return result


@torch.inference_mode()
def sequence_log_probs(runner: Runner, prompts: Sequence[list[int]], continuations: Sequence[list[int]], *,
                       batch_size: int = SCORE_BATCH) -> torch.Tensor:
    """``log p(continuation | prompt)`` for each pair, summed over the continuation's tokens (float32, on CPU).

    Prompts may hold virtual ids (``>= vocab_rows``); continuations only real ids. Pairs run as left-padded
    forward passes of ``batch_size`` rows, position ids following the mask; the results equal scoring the pairs
    one at a time, to float tolerance.
    """
    prompts, continuations = [list(p) for p in prompts], [list(c) for c in continuations]
    _check_pairs(runner, prompts, continuations)
    if not prompts:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat([_score_chunk(runner, prompts[i:i + batch_size], continuations[i:i + batch_size])
                      for i in range(0, len(prompts), batch_size)])


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


def _score_chunk(runner: Runner, prompts: list[list[int]], continuations: list[list[int]]) -> torch.Tensor:
    longest = max((len(c) for c in continuations), default=0)
    if longest == 0:
        return torch.zeros(len(prompts), dtype=torch.float32)
    inputs = runner.inputs.batch([p + c for p, c in zip(prompts, continuations, strict=True)], runner.table,
                                 positions=True)
    keep = longest + 1  # the last position predicts nothing; the one before the first continuation token does
    log_probs = runner.model(**inputs, logits_to_keep=keep).logits[:, -keep:].float().log_softmax(-1)
    rows, positions, tokens, valid = _gather_index(continuations, keep)
    picked = log_probs[rows.to(log_probs.device), positions.to(log_probs.device), tokens.to(log_probs.device)]
    return picked.cpu().masked_fill(~valid, 0.0).sum(dim=1)


def _log_weights(scores: Sequence[float], temperature: float, passages: int | None = None) -> torch.Tensor:
    """``log p(z|x)`` in float64, after checking the scores (one per passage) and the temperature."""
    if passages == 0:
        raise DecodingError("marginal decoding needs at least one passage; retrieve some, or use decoding='stuff'")
    if isinstance(scores, (str, bytes)) or any(isinstance(s, bool) or not isinstance(s, numbers.Real)
                                               for s in scores):
        raise DecodingError(f"passage scores must be a list of numbers, one per passage; got {scores!r:.80}")
    values = [float(s) for s in scores]
    if not values:
        raise DecodingError("no passage scores were given; pass one retrieval score per passage")
    if passages is not None and len(values) != passages:
        raise DecodingError(
            f"got {passages} passages but {len(values)} scores; pass exactly one retrieval score per passage"
        )
    bad = [i for i, s in enumerate(values) if not math.isfinite(s)]
    if bad:
        raise DecodingError(
            f"passage score at index {bad[0]} is {values[bad[0]]}; scores must be finite numbers "
            "(check the retriever's output, or drop that passage)"
        )
    try:
        usable = not isinstance(temperature, bool) and math.isfinite(float(temperature)) and float(temperature) > 0
    except (TypeError, ValueError, OverflowError):
        usable = False
    if not usable:
        raise DecodingError(
            f"the weight temperature must be a finite number > 0, got {temperature}; "
            "1.0 uses the retriever's scores as they are, smaller values sharpen the weights"
        )
    return torch.log_softmax(torch.tensor(values, dtype=torch.float64) / temperature, dim=0)


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A private RNG for sampling: seeded when asked, else from fresh entropy; the global RNG is never touched."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


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


def _check_settings(settings: GenerationSettings, *, sampling: bool) -> None:
    if settings.top_p < 1 or settings.min_new_tokens or (settings.temperature > 0 and not sampling):
        raise DecodingError("marginal decoding does not support top_p or min_new_tokens, and only rag-token samples "
                            "(temperature > 0); drop those settings or use decoding='stuff'")


def _check_pairs(runner: Runner, prompts: list[list[int]], continuations: list[list[int]]) -> None:
    if len(prompts) != len(continuations):
        raise DecodingError(
            f"got {len(prompts)} prompts but {len(continuations)} continuations; pass one continuation per prompt"
        )
    vocab = runner.inputs.vocab_rows
    table = runner.table
    top = vocab + (0 if table is None else int(table.shape[0]))
    for i, (prompt, continuation) in enumerate(zip(prompts, continuations, strict=True)):
        if not prompt:
            raise DecodingError(f"prompt {i} is empty; a continuation needs at least one prompt token to follow")
        if any(not 0 <= t < top for t in prompt):
            raise DecodingError(f"prompt {i} holds an id outside 0..{top - 1} (base vocabulary plus virtual tokens)")
        if any(not 0 <= t < vocab for t in continuation):
            raise DecodingError(
                f"continuation {i} holds an id outside the base vocabulary 0..{vocab - 1}; "
                "virtual tokens can be read but never generated or scored"
            )


def _result(runner: Runner, ids: list[int], settings: GenerationSettings, parts: Sequence[PromptParts],
            prepared: Sequence[tuple[Healed, list[int]]], log_w: torch.Tensor) -> Generation:
    k = parts[0].k
    result = runner.finish(ids, settings, prepared[0][0].spaces, prompt_tokens=sum(len(p) - k for _, p in prepared),
                           virtual_tokens=k * len(parts), prompt=parts[0].render())
    result.weights = log_w.exp().float().tolist()
    return result
