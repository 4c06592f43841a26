"""Marginal decoding over retrieved passages (RAG-Token and RAG-Sequence, Lewis et al. 2020), with or without SPRING.

Every passage ``z`` is read on its own: its prompt is ``[1] z`` + ``[r1]..[rk]`` + the question, in the model's
layout. The retriever's scores give the passage weights ``p(z|x) = softmax(scores / weight_temperature)``. All
passage prompts of a question run as one left-padded batch that keeps its KV cache across decoding steps.

* ``rag_token`` mixes the passages at every step: ``p(y_t|x, y<t) = sum_z p(z|x) p(y_t|x, z, y<t)``; the chosen
  token is appended to every passage's sequence.
* ``rag_sequence`` decodes one greedy candidate per passage, then picks ``argmax_y sum_z p(z|x) p(y|x, z)``:
  "thorough" scores every candidate under every passage, ``fast=True`` counts only the passages that produced it.

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

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from spring_core.errors import SpringError
from spring_core.prompts import Passage
from spring_core.spring_model import SpringModel, Usage

MODES = ("concat", "rag-token", "rag-sequence", "rag-sequence-fast")
"""``SpringModel.generate(mode=...)``: one prompt with every passage, or marginal decoding over passages."""


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
              weight_temperature: float = 1.0) -> MarginalGeneration:
    """RAG-Token: at every step mix the passages' next-token distributions by ``p(z|x)`` and pick one token.

    ``temperature == 0`` takes the mixture's argmax; otherwise each passage's distribution is
    ``softmax(logits / temperature)`` and the token is sampled from their mixture with a local generator
    (``seed``), leaving the global RNG alone. One sequence (one beam) per question.
    """
    _check_settings(max_new_tokens, temperature)
    prompts, log_w = _passage_prompts(sm, question, passages, scores, k, weight_temperature)
    generator = _generator(sm.device, seed) if temperature > 0 else None
    log_w_col = log_w.to(sm.device).unsqueeze(1)

    def choose(logits: torch.Tensor) -> torch.Tensor:
        scaled = logits.double() / temperature if temperature > 0 else logits.double()
        mixture = torch.logsumexp(log_w_col + scaled.log_softmax(-1), dim=0)
        if generator is None:
            token = mixture.argmax()
        else:
            token = torch.multinomial(mixture.exp(), 1, generator=generator)[0]
        return token.expand(logits.shape[0])

    rows, _ = _decode(_CachedBatch(sm, prompts), max_new_tokens, choose)
    return _result(sm, rows[0], log_w, prompts, k)


@torch.inference_mode()
def rag_sequence(sm: SpringModel, question: str, passages: Sequence[Passage], scores: Sequence[float], *,
                 k: int = 0, max_new_tokens: int = 64, fast: bool = False,
                 weight_temperature: float = 1.0) -> MarginalGeneration:
    """RAG-Sequence: one greedy answer per passage, then the answer with the highest ``sum_z p(z|x) p(y|x, z)``.

    Thorough decoding (default) scores every distinct candidate under every passage, teacher-forced in one batch;
    ``fast=True`` lets only the passages that produced a candidate count (the others as probability 0), so no
    scoring pass runs at all. A passage's own candidate is scored with the log-probabilities of its greedy pass.
    """
    _check_settings(max_new_tokens, 0.0)
    prompts, log_w = _passage_prompts(sm, question, passages, scores, k, weight_temperature)
    stepper = _CachedBatch(sm, prompts, keep_prompt_cache=not fast)
    outputs, own_log_p = _decode(stepper, max_new_tokens, lambda logits: logits.argmax(-1))
    producers: dict[tuple[int, ...], list[int]] = {}
    for z, ids in enumerate(outputs):
        producers.setdefault(tuple(ids), []).append(z)
    candidates = [list(ids) for ids in producers]
    log_p = torch.full((len(candidates), len(prompts)), -math.inf, dtype=torch.float64)
    for c, zs in enumerate(producers.values()):
        for z in zs:
            log_p[c, z] = own_log_p[z]
    if not fast:
        _score_others(stepper, candidates, list(producers.values()), log_p)
    marginal = torch.logsumexp(log_w.unsqueeze(0) + log_p, dim=1)
    order = sorted(range(len(candidates)), key=lambda c: -float(marginal[c]))  # stable: earlier passage wins ties
    result = _result(sm, candidates[order[0]], log_w, prompts, k)
    result.candidates = [(_text(sm, candidates[c]), float(marginal[c])) for c in order]
    return result


@torch.inference_mode()
def sequence_log_probs(sm: SpringModel, prompts: Sequence[list[int]],
                       continuations: Sequence[list[int]]) -> torch.Tensor:
    """``log p(continuation | prompt)`` for each pair, summed over the continuation's tokens (float32, on CPU).

    Prompts may hold virtual ids (``>= sm.vocab_rows``); continuations only real ids. All pairs run as one
    left-padded forward pass; the results equal scoring the pairs one at a time, to float tolerance.
    """
    prompts, continuations = [list(p) for p in prompts], [list(c) for c in continuations]
    _check_pairs(sm, prompts, continuations)
    longest = max((len(c) for c in continuations), default=0)
    if longest == 0:
        return torch.zeros(len(prompts), dtype=torch.float32)
    inputs = sm.model_inputs([p + c for p, c in zip(prompts, continuations, strict=True)])
    mask = inputs.pop("attention_mask")
    keep = longest + 1  # the last position predicts nothing; the one before the first continuation token does
    log_probs = _forward(sm, inputs, mask, keep=keep).float().log_softmax(-1)
    rows, positions, tokens, valid = _gather_index(continuations, keep)
    picked = log_probs[rows.to(log_probs.device), positions.to(log_probs.device), tokens.to(log_probs.device)]
    return picked.cpu().masked_fill(~valid, 0.0).sum(dim=1)


# ----- helpers -----------------------------------------------------------------------------------------------


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


def _decode(stepper: _CachedBatch, max_new_tokens: int,
            choose: Callable[[torch.Tensor], torch.Tensor]) -> tuple[list[list[int]], list[float]]:
    """Decode the stepper's prompts; ``choose`` maps next-token logits ``[B, V]`` to tokens ``[B]``.

    Returns each row's new ids (up to and including its end-of-sequence id) and their summed log-probability.
    """
    sm = stepper.sm
    eos_ids = sm._eos_ids()
    logits = stepper.start()
    rows: list[list[int]] = [[] for _ in range(stepper.batch_size)]
    log_p = [0.0] * stepper.batch_size
    done = [False] * stepper.batch_size
    for step in range(max_new_tokens):
        tokens = choose(logits)
        chosen = logits.log_softmax(-1).gather(1, tokens.view(-1, 1)).view(-1).tolist()
        for row, token in enumerate(tokens.tolist()):
            if not done[row]:
                rows[row].append(token)
                log_p[row] += chosen[row]
                done[row] = token in eos_ids
        if all(done) or step == max_new_tokens - 1:
            break
        finished = torch.tensor(done, device=tokens.device)
        logits = stepper.step(tokens.masked_fill(finished, sm.pad_token_id))
    return rows, log_p


class _CachedBatch:
    """Left-padded prompts read once, then extended one token per row, reusing the KV cache.

    The first step feeds ``input_ids`` or (with virtual tokens) ``inputs_embeds``; later steps feed the chosen
    ids. Position ids follow the attention mask, as Hugging Face ``generate`` does under left padding.

    With ``keep_prompt_cache``, ``start`` also keeps a copy of the prompts' cache, mask and first next-token
    log-probabilities, so that ``score`` can teacher-force other continuations without reading the prompts again.
    """

    def __init__(self, sm: SpringModel, prompts: list[list[int]], *, keep_prompt_cache: bool = False):
        self.sm = sm
        self.batch_size = len(prompts)
        self.inputs = sm.model_inputs(prompts)
        self.mask = self.inputs.pop("attention_mask")
        self.cache: Any = None
        self.keep_prompt_cache = keep_prompt_cache
        self.prompt: tuple[Any, torch.Tensor, torch.Tensor] | None = None

    def start(self) -> torch.Tensor:
        logits = self._next_logits(self.inputs)
        if self.keep_prompt_cache:
            self.prompt = (copy.deepcopy(self.cache), self.mask, logits.double().log_softmax(-1))
        return logits

    def score(self, continuation: list[int]) -> torch.Tensor:
        """``log p(continuation | prompt)`` for every prompt ``[B]`` (float64, on the model's device)."""
        if self.prompt is None:
            raise RuntimeError("score() needs keep_prompt_cache=True and a start() call")
        cache, mask, first = self.prompt
        log_p = first[:, continuation[0]].clone()
        rest = continuation[1:]
        if rest:  # feed every token but the last; the logits at token j give token j + 1
            ids = torch.tensor(continuation[:-1], device=mask.device).expand(self.batch_size, -1)
            mask = torch.cat([mask, mask.new_ones((self.batch_size, len(rest)))], dim=1)
            logits, _ = _forward(self.sm, {"input_ids": ids}, mask, keep=len(rest), cache=copy.deepcopy(cache),
                                 use_cache=True)
            targets = torch.tensor(rest, device=logits.device).view(1, -1, 1).expand(self.batch_size, -1, 1)
            log_p += logits.double().log_softmax(-1).gather(2, targets).view(self.batch_size, -1).sum(1)
        return log_p

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        return self._next_logits({"input_ids": tokens.view(-1, 1)})

    def _next_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, self.cache = _forward(self.sm, inputs, self.mask, keep=1, cache=self.cache, use_cache=True)
        return logits[:, -1].float()


def _forward(sm: SpringModel, inputs: dict[str, torch.Tensor], mask: torch.Tensor, *, keep: int,
             cache: Any = None, use_cache: bool = False) -> Any:
    """The last ``keep`` positions' logits (plus the cache when ``use_cache``) for inputs ending at ``mask``'s end."""
    model = sm.model
    width = next(iter(inputs.values())).shape[1]
    kwargs: dict[str, Any] = dict(inputs)
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)[:, -width:]
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    # Like generate(): an all-ones mask is dropped so unpadded rows take the same kernels as a plain forward.
    attention_mask = None if bool(mask.all()) else mask
    output = model(**kwargs, attention_mask=attention_mask, past_key_values=cache, use_cache=use_cache)
    logits = output.logits[:, -keep:]
    return (logits, output.past_key_values) if use_cache else logits


def _accepts(model: Any, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


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


def _score_others(stepper: _CachedBatch, candidates: list[list[int]], producers: list[list[int]],
                  log_p: torch.Tensor) -> None:
    """Fill ``log_p[c, z]`` for every passage ``z`` that did not produce candidate ``c``.

    Each candidate is teacher-forced under all passages at once on a copy of the prompts' KV cache, so thorough
    decoding reads only the candidates' tokens again, never the passages.
    """
    for c, ids in enumerate(candidates):
        others = [z for z in range(stepper.batch_size) if z not in producers[c]]
        if others:
            scored = stepper.score(ids).cpu()
            log_p[c, others] = scored[others]


def _text(sm: SpringModel, ids: list[int]) -> str:
    return sm.tokenizer.decode(ids, skip_special_tokens=True)


def _result(sm: SpringModel, ids: list[int], log_w: torch.Tensor, prompts: list[list[int]],
            k: int) -> MarginalGeneration:
    finish = "stop" if ids and ids[-1] in sm._eos_ids() else "length"
    usage = Usage(
        prompt_tokens=sum(len(p) - k for p in prompts),
        completion_tokens=len(ids),
        virtual_tokens=k * len(prompts),
    )
    weights = log_w.exp().float().tolist()
    return MarginalGeneration(text=_text(sm, ids), token_ids=list(ids), weights=weights, finish_reason=finish,
                              usage=usage)
