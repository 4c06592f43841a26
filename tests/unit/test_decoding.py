"""Marginal decoding (RAG-Token, RAG-Sequence) on the tiny random Llama, with and without virtual tokens."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import weights_digest

from spring_core import MarkerError, OptionError, SpringModel, VirtualTokens
from spring_core.errors import DecodingError
from spring_core.generation import marginal, passage_weights
from spring_core.types import Generation, Usage


def rag_token(sm, question, passages, scores, *, k=0, weight_temperature=1.0, **settings):
    """RAG-Token through the public entry point, ``SpringModel.generate(decoding="rag-token")``."""
    return sm.generate(question, passages, k, decoding="rag-token", scores=scores,
                       weight_temperature=weight_temperature, **settings)


def rag_sequence(sm, question, passages, scores, *, k=0, fast=False, weight_temperature=1.0, **settings):
    mode = "rag-sequence-fast" if fast else "rag-sequence"
    return sm.generate(question, passages, k, decoding=mode, scores=scores, weight_temperature=weight_temperature,
                       **settings)


def sequence_log_probs(sm, prompts, continuations, **kwargs):
    return marginal.sequence_log_probs(sm.runner, prompts, continuations, **kwargs)


QUESTION = "Who wrote Hamlet?"
PASSAGES = [
    "William Shakespeare wrote the play Hamlet.",
    "The Eiffel Tower is in Paris, France.",
    "Normans gave their name to Normandy.",
]


@pytest.fixture()
def plain(tiny):
    return SpringModel(*tiny)


@pytest.fixture()
def spring(tiny):
    model, tokenizer = tiny
    return SpringModel(model, tokenizer, VirtualTokens.random(model, 4, tokenizer=tokenizer))


@pytest.fixture(params=["plain", "k3"])
def sm_k(request, plain, spring):
    """``(SpringModel, k)``: the base model alone, and the model reading 3 virtual tokens."""
    return (plain, 0) if request.param == "plain" else (spring, 3)


def greedy(sm, passage, k, max_new_tokens=8):
    return sm.generate(QUESTION, [passage], k=k, max_new_tokens=max_new_tokens)


def prompt_ids(sm, passage, k):
    return sm.encode(sm.prompt_parts(QUESTION, [passage], k))


# ----- one passage is plain greedy decoding ------------------------------------------------------------------


def test_rag_token_with_one_passage_is_plain_greedy(sm_k):
    sm, k = sm_k
    out = rag_token(sm, QUESTION, [PASSAGES[0]], [0.3], k=k, max_new_tokens=8)
    expected = greedy(sm, PASSAGES[0], k)
    assert isinstance(out, Generation)
    assert out.text == expected.text
    assert out.finish_reason == expected.finish_reason
    assert out.usage == expected.usage
    assert out.weights == [1.0] and out.candidates == []
    assert len(out.token_ids) == out.usage.completion_tokens


@pytest.mark.parametrize("fast", [False, True])
def test_rag_sequence_with_one_passage_is_plain_greedy(sm_k, fast):
    sm, k = sm_k
    out = rag_sequence(sm, QUESTION, [PASSAGES[1]], [0.3], k=k, max_new_tokens=8, fast=fast)
    expected = greedy(sm, PASSAGES[1], k)
    assert out.text == expected.text
    assert out.usage == expected.usage
    assert [text for text, _ in out.candidates] == [expected.text]


def test_usage_counts_every_passage_sequence(sm_k):
    sm, k = sm_k
    out = rag_token(sm, QUESTION, PASSAGES, [1.0, 2.0, 3.0], k=k, max_new_tokens=5)
    real = sum(len(prompt_ids(sm, p, k)) - k for p in PASSAGES)
    assert out.usage == Usage(prompt_tokens=real, completion_tokens=len(out.token_ids), virtual_tokens=3 * k)


# ----- passage weights ---------------------------------------------------------------------------------------


def test_weights_sum_to_one_and_follow_the_scores():
    weights = passage_weights([0.5, 2.0, -1.0])
    assert weights.dtype == torch.float32
    assert math.isclose(float(weights.sum()), 1.0, abs_tol=1e-6)
    assert int(weights.argmax()) == 1
    assert torch.allclose(weights, torch.softmax(torch.tensor([0.5, 2.0, -1.0]), dim=0))


def test_equal_scores_give_uniform_weights():
    assert torch.allclose(passage_weights([3.0] * 4), torch.full((4,), 0.25))


def test_lower_temperature_sharpens_the_weights():
    scores = [1.0, 2.0, 0.5]
    peaks = [float(passage_weights(scores, t).max()) for t in (4.0, 1.0, 0.25)]
    assert peaks[0] < peaks[1] < peaks[2]


def test_generation_reports_the_weights(plain):
    out = rag_token(plain, QUESTION, PASSAGES, [1.0, 2.0, 3.0], max_new_tokens=2, weight_temperature=0.5)
    assert out.weights == pytest.approx(passage_weights([1.0, 2.0, 3.0], 0.5).tolist())


# ----- sequence_log_probs ------------------------------------------------------------------------------------


def pairs(sm, k):
    prompts = [prompt_ids(sm, p, k) for p in PASSAGES]
    continuations = [[40, 41, 42], [7], [100, 200, 300, 12, 5]]
    return prompts, continuations


def test_sequence_log_probs_batched_equals_one_by_one(sm_k):
    sm, k = sm_k
    prompts, continuations = pairs(sm, k)
    assert len({len(p) + len(c) for p, c in zip(prompts, continuations, strict=True)}) > 1  # padding is exercised
    assert any(t >= sm.vocab_rows for t in prompts[0]) == (k > 0)
    batched = sequence_log_probs(sm, prompts, continuations)
    one_by_one = torch.cat([sequence_log_probs(sm, [p], [c]) for p, c in zip(prompts, continuations, strict=True)])
    assert batched.shape == (3,) and batched.dtype == torch.float32
    assert bool((batched < 0).all())
    assert torch.allclose(batched, one_by_one, atol=1e-4)


def test_sequence_log_probs_equals_a_full_forward_pass(sm_k):
    sm, k = sm_k
    prompts, continuations = pairs(sm, k)
    prompt, continuation = prompts[2], continuations[2]
    ids = torch.tensor([prompt + continuation])
    with torch.inference_mode():
        inputs = {"inputs_embeds": sm.embed(ids)} if k else {"input_ids": ids}
        log_probs = sm.model(**inputs).logits[0].float().log_softmax(-1)
    manual = sum(float(log_probs[len(prompt) - 1 + j, token]) for j, token in enumerate(continuation))
    assert float(sequence_log_probs(sm, [prompt], [continuation])[0]) == pytest.approx(manual, abs=1e-4)


def test_sequence_log_probs_of_empty_continuations_is_zero(plain):
    prompts, _ = pairs(plain, 0)
    assert sequence_log_probs(plain, prompts[:2], [[], []]).tolist() == [0.0, 0.0]
    assert sequence_log_probs(plain, [], []).shape == (0,)


def test_sequence_log_probs_rejects_bad_pairs(spring):
    prompts, continuations = pairs(spring, 3)
    with pytest.raises(DecodingError, match="3 prompts but 2 continuations"):
        sequence_log_probs(spring, prompts, continuations[:2])
    with pytest.raises(DecodingError, match="prompt 0 is empty"):
        sequence_log_probs(spring, [[]], [[5]])
    with pytest.raises(DecodingError, match="never generated or scored"):
        sequence_log_probs(spring, [prompts[0]], [[spring.vocab_rows]])


# ----- RAG-Token mixes the passages' distributions -----------------------------------------------------------


@pytest.mark.parametrize("scores", [[0.2, 1.1], [1.1, 0.2], [0.0, 0.0]])
def test_rag_token_first_token_is_the_argmax_of_the_mixture(sm_k, scores):
    sm, k = sm_k
    two = PASSAGES[:2]
    w = passage_weights(scores)
    probs = [torch.softmax(sm.logits(sm.prompt_parts(QUESTION, [p], k))[0, -1].float(), -1) for p in two]
    mixture = w[0] * probs[0] + w[1] * probs[1]
    out = rag_token(sm, QUESTION, two, scores, k=k, max_new_tokens=1)
    assert out.token_ids == [int(mixture.argmax())]


def test_rag_token_with_a_dominant_passage_is_that_passages_greedy(sm_k):
    sm, k = sm_k
    out = rag_token(sm, QUESTION, PASSAGES[:2], [0.0, 50.0], k=k, max_new_tokens=8)
    assert out.text == greedy(sm, PASSAGES[1], k).text


# ----- RAG-Sequence: thorough and fast -----------------------------------------------------------------------


@pytest.mark.parametrize("fast", [False, True])
def test_rag_sequence_answers_with_one_of_the_per_passage_greedy_outputs(sm_k, fast):
    sm, k = sm_k
    outputs = {greedy(sm, p, k).text for p in PASSAGES}
    out = rag_sequence(sm, QUESTION, PASSAGES, [1.0, 0.2, 0.7], k=k, max_new_tokens=8, fast=fast)
    assert out.text in outputs
    assert {text for text, _ in out.candidates} == outputs  # batched, cached decoding equals one-by-one greedy
    assert out.candidates[0][0] == out.text
    log_probs = [lp for _, lp in out.candidates]
    assert log_probs == sorted(log_probs, reverse=True)
    assert out.usage.virtual_tokens == 3 * k


@pytest.mark.parametrize("fast", [False, True])
def test_rag_sequence_with_a_dominant_passage_is_that_passages_greedy(sm_k, fast):
    sm, k = sm_k
    out = rag_sequence(sm, QUESTION, PASSAGES[:2], [50.0, 0.0], k=k, max_new_tokens=8, fast=fast)
    assert out.text == greedy(sm, PASSAGES[0], k).text


def test_thorough_marginals_sum_over_every_passage(sm_k):
    sm, k = sm_k
    scores = [1.0, 0.2, 0.7]
    out = rag_sequence(sm, QUESTION, PASSAGES, scores, k=k, max_new_tokens=6)
    prompts = [prompt_ids(sm, p, k) for p in PASSAGES]
    log_w = torch.log(passage_weights(scores)).double()
    candidate = out.token_ids
    scored = sequence_log_probs(sm, prompts, [candidate] * len(prompts)).double()
    assert out.candidates[0][1] == pytest.approx(float(torch.logsumexp(log_w + scored, 0)), abs=1e-4)


def test_fast_marginals_count_only_the_producing_passages(sm_k):
    sm, k = sm_k
    scores = [1.0, 0.2, 0.7]
    prompts = [prompt_ids(sm, p, k) for p in PASSAGES]
    out = rag_sequence(sm, QUESTION, PASSAGES, scores, k=k, max_new_tokens=6, fast=True)
    producers = [z for z, p in enumerate(PASSAGES) if greedy(sm, p, k, 6).text == out.text]
    log_w = torch.log(passage_weights(scores)).double()
    own = sequence_log_probs(sm, [prompts[z] for z in producers], [out.token_ids] * len(producers)).double()
    assert out.candidates[0][1] == pytest.approx(float(torch.logsumexp(log_w[producers] + own, 0)), abs=1e-4)


def test_a_candidate_ending_in_eos_is_scored_with_its_eos(plain, monkeypatch):
    prompts = [prompt_ids(plain, p, 0) for p in PASSAGES[:2]]
    first_id = rag_token(plain, QUESTION, PASSAGES[:1], [0.0], max_new_tokens=1).token_ids
    assert first_id != rag_token(plain, QUESTION, PASSAGES[1:2], [0.0], max_new_tokens=1).token_ids
    monkeypatch.setattr(plain.inputs, "eos_token_ids", (first_id[0],))  # passage 0 stops after 1 token
    out = rag_sequence(plain, QUESTION, PASSAGES[:2], [5.0, 0.0], max_new_tokens=4)
    assert out.token_ids == first_id and out.finish_reason == "stop"
    log_w = torch.log(passage_weights([5.0, 0.0])).double()
    scored = sequence_log_probs(plain, prompts, [first_id, first_id]).double()
    assert out.candidates[0][1] == pytest.approx(float(torch.logsumexp(log_w + scored, 0)), abs=1e-4)


# ----- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decode", [rag_token, rag_sequence])
def test_bad_input_is_refused_with_an_actionable_message(spring, decode):
    with pytest.raises(DecodingError, match="at least one passage"):
        decode(spring, QUESTION, [], [])
    with pytest.raises(DecodingError, match="2 passages but 3 scores"):
        decode(spring, QUESTION, PASSAGES[:2], [1.0, 2.0, 3.0])
    with pytest.raises(DecodingError, match="index 1 is nan"):
        decode(spring, QUESTION, PASSAGES[:2], [1.0, float("nan")])
    with pytest.raises(DecodingError, match="temperature must be a finite number > 0"):
        decode(spring, QUESTION, PASSAGES[:2], [1.0, 2.0], weight_temperature=0)
    with pytest.raises(OptionError, match="max_new_tokens"):
        decode(spring, QUESTION, PASSAGES[:2], [1.0, 2.0], max_new_tokens=0)
    with pytest.raises(MarkerError, match="k = 5 is out of range"):
        decode(spring, QUESTION, PASSAGES[:2], [1.0, 2.0], k=5)


def test_passage_weights_refuses_bad_scores_and_temperatures():
    with pytest.raises(DecodingError, match="no passage scores"):
        passage_weights([])
    with pytest.raises(DecodingError, match="index 2 is inf"):
        passage_weights([0.0, 1.0, float("inf")])
    for temperature in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(DecodingError, match="temperature must be a finite number > 0"):
            passage_weights([0.0, 1.0], temperature)


def test_rag_token_refuses_a_negative_temperature(plain):
    with pytest.raises(OptionError, match="temperature must be a finite number >= 0"):
        rag_token(plain, QUESTION, PASSAGES[:1], [0.0], temperature=-0.5)


# ----- side effects ------------------------------------------------------------------------------------------


def test_base_weights_and_token_table_are_never_written(tiny, spring):
    model, _ = tiny
    before, table = weights_digest(model), spring.tokens.weight.clone()
    rag_token(spring, QUESTION, PASSAGES, [1.0, 2.0, 3.0], k=3, max_new_tokens=4, temperature=0.8, seed=1)
    rag_sequence(spring, QUESTION, PASSAGES, [1.0, 2.0, 3.0], k=3, max_new_tokens=4)
    sequence_log_probs(spring, [prompt_ids(spring, PASSAGES[0], 3)], [[5, 6]])
    assert weights_digest(model) == before
    assert torch.equal(spring.tokens.weight, table)


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(sm_k):
    sm, k = sm_k
    state = torch.get_rng_state()
    runs = [rag_token(sm, QUESTION, PASSAGES, [1.0, 0.0, 0.5], k=k, max_new_tokens=8, temperature=1.5, seed=7)
            for _ in range(2)]
    assert runs[0].token_ids == runs[1].token_ids and runs[0].text == runs[1].text
    assert torch.equal(torch.get_rng_state(), state)
    unseeded = rag_token(sm, QUESTION, PASSAGES, [1.0, 0.0, 0.5], k=k, max_new_tokens=8, temperature=1.5)
    assert len(unseeded.token_ids) == unseeded.usage.completion_tokens
    assert torch.equal(torch.get_rng_state(), state)


def test_generate_mode_dispatches_to_marginal_decoding(tiny):
    sm = SpringModel(tiny[0], tiny[1], VirtualTokens.random(tiny[0], 4, tokenizer=tiny[1]))
    question, passage = "Who wrote Hamlet?", "Hamlet is a play by William Shakespeare."
    plain = sm.generate(question, [passage], k=2, max_new_tokens=6)
    for mode in ("rag-token", "rag-sequence", "rag-sequence-fast"):
        out = sm.generate(question, [passage], k=2, max_new_tokens=6, decoding=mode)
        assert out.text == plain.text and out.usage.virtual_tokens == 2
    two = sm.generate(question, [passage, "Rivers and mountains."], k=2, max_new_tokens=6, decoding="rag-token",
                      scores=[1.0, 0.0])
    assert two.usage.virtual_tokens == 4  # each passage's sequence reads the block
    with pytest.raises(OptionError, match="decoding must be one of stuff, rag-token"):
        sm.generate(question, [passage], decoding="rag-everything")
    with pytest.raises(DecodingError, match="only rag-token samples"):
        sm.generate(question, [passage], decoding="rag-sequence", temperature=0.7)


@pytest.mark.parametrize("mode", ["rag-token", "rag-sequence", "rag-sequence-fast"])
def test_marginal_modes_stop_at_a_stop_string_and_count_tokens_like_concat(sm_k, mode):
    sm, k = sm_k
    ids = rag_token(sm, QUESTION, PASSAGES[:1], [0.0], k=k, max_new_tokens=8).token_ids
    stop = next(text for token in ids[2:] if (text := sm.tokenizer.decode([token])).strip())
    concat = sm.generate(QUESTION, PASSAGES[:1], k, max_new_tokens=8, stop=[stop])
    out = sm.generate(QUESTION, PASSAGES[:1], k, max_new_tokens=8, stop=[stop], decoding=mode)
    assert (out.text, out.usage, out.finish_reason) == (concat.text, concat.usage, concat.finish_reason)
    assert out.finish_reason == "stop" and stop not in out.text and out.usage.completion_tokens < len(ids)
