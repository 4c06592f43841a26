"""Token healing: a RAG prompt that ends in spaces is read without them, and its first token brings them back."""

from __future__ import annotations

import pytest
import torch

from spring_core import SpringModel, VirtualTokens
from spring_core.model.healing import Healed, allowed_first_ids, heal, visible
from spring_core.model.inputs import InputLayer
from spring_core.prompts.templates import TEMPLATES, render_template
from spring_core.types import PromptParts
from spring_train.batching import build_example

BEFORE = "Context information is below.\nHamlet is a play by William Shakespeare.\n"
AFTER = "Query: Who wrote Hamlet?\nAnswer: "


@pytest.fixture(scope="module")
def sm(tiny):
    model, tokenizer = tiny
    return SpringModel(model, tokenizer, VirtualTokens.random(model, n=8, seed=3))


def greedy_healed_by_hand(sm, parts, spaces, steps):
    """Greedy decoding written out: the prompt without its spaces, the first token among those that start with
    them, then free argmax steps."""
    ids = sm.encode(parts)
    allowed = allowed_first_ids(sm.tokenizer, spaces)
    out = []
    with torch.inference_mode():
        for step in range(steps):
            logits = sm.model(**sm.model_inputs([ids + out])).logits[0, -1]
            if step == 0:
                token = int(allowed[logits[allowed].argmax()])
            else:
                token = int(logits.argmax())
            out.append(token)
            if token in sm.eos_ids():
                break
    return out


def test_heal_strips_trailing_spaces_only_from_prompts_with_a_block():
    assert heal(PromptParts("ctx\n", 3, AFTER)) == (PromptParts("ctx\n", 3, AFTER.rstrip()), " ")
    assert heal(PromptParts("ctx\n", 3, "Answer:  ")) == (PromptParts("ctx\n", 3, "Answer:"), "  ")
    assert heal(PromptParts(BEFORE + AFTER)) == (PromptParts(BEFORE + AFTER), "")  # k = 0: the base model's prompt
    assert heal(PromptParts("ctx ", 3, "")) == (PromptParts("ctx ", 3, ""), "")  # the block ends the prompt
    assert heal(PromptParts("ctx\n", 3, "Answer:\n")) == (PromptParts("ctx\n", 3, "Answer:\n"), "")
    assert visible(" Paris", " ") == "Paris" and visible("Paris", " ") == "Paris" and visible(" x", "") == " x"


def test_allowed_first_ids_are_exactly_the_ids_whose_text_starts_with_the_spaces(tiny):
    _, tokenizer = tiny
    allowed = set(allowed_first_ids(tokenizer, " ").tolist())
    word = tokenizer(" Hamlet", add_special_tokens=False)["input_ids"][0]
    bare = tokenizer("Hamlet", add_special_tokens=False)["input_ids"][0]
    assert word in allowed and bare not in allowed
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"]
    for i in range(len(tokenizer)):
        assert (i in allowed) == tokenizer.decode([*anchor, i])[1:].startswith(" ")
    layer = InputLayer(*tiny)
    parts = PromptParts(BEFORE, 2, AFTER)
    assert layer.heal(parts).first_ids is layer.heal(parts).first_ids  # computed once per input layer


def test_only_ids_the_model_can_emit_are_allowed_and_without_any_the_prompt_is_not_healed(tiny):
    _, tokenizer = tiny
    parts = PromptParts(BEFORE, 2, AFTER)
    every = allowed_first_ids(tokenizer, " ")
    layer = InputLayer(*tiny)
    layer.output_rows = int(every[3])  # a model whose lm_head emits only the ids below the 4th allowed one
    healed = layer.heal(parts)
    assert (healed.parts, healed.spaces) == heal(parts) and healed.first_ids.tolist() == every[:3].tolist()
    layer = InputLayer(*tiny)
    layer.output_rows = int(every[0])  # none of them
    assert layer.heal(parts) == Healed(parts)


def test_a_healed_prompt_decodes_as_the_constrained_greedy_written_out(sm):
    parts = PromptParts(BEFORE, 8, AFTER)
    healed, spaces = heal(parts)
    expected = greedy_healed_by_hand(sm, healed, spaces, steps=10)
    out = sm.generate_from_prompt(parts, max_new_tokens=10)
    assert out.text == visible(sm.tokenizer.decode(expected, skip_special_tokens=True), spaces)
    assert sm.tokenizer.decode(expected[:1]).startswith(" ")
    assert out.usage.prompt_tokens == len(sm.encode(healed)) - 8  # the prompt fed holds no trailing space token
    assert out.usage.completion_tokens == len(expected) and out.prompt == parts.render()


def test_healing_changes_the_first_step_here_so_the_test_above_is_not_vacuous(sm):
    parts = PromptParts(BEFORE, 8, AFTER)
    with torch.inference_mode():
        unhealed = sm.model(**sm.model_inputs([sm.encode(parts)])).logits[0, -1]
    healed, spaces = heal(parts)
    with torch.inference_mode():
        logits = sm.model(**sm.model_inputs([sm.encode(healed)])).logits[0, -1]
    assert not torch.equal(logits, unhealed)
    assert int(logits.argmax()) not in set(allowed_first_ids(sm.tokenizer, spaces).tolist())


def test_stream_and_batch_heal_as_generate_does(sm):
    healed_prompt = PromptParts(BEFORE, 8, AFTER)
    others = [PromptParts(BEFORE, 8, "Query: Who wrote Hamlet?\nAnswer:"), PromptParts(BEFORE + AFTER)]
    one_by_one = [sm.generate_from_prompt(p, max_new_tokens=8) for p in [healed_prompt, *others]]
    batched = sm.generate_batch([healed_prompt, *others], max_new_tokens=8)
    assert [g.text for g in batched] == [g.text for g in one_by_one]
    assert [g.usage for g in batched] == [g.usage for g in one_by_one]
    stream = sm.stream_from_prompt(healed_prompt, max_new_tokens=8)
    assert "".join(stream) == one_by_one[0].text and stream.result.usage == one_by_one[0].usage


def test_a_prompt_without_a_block_that_ends_in_a_space_is_the_base_models(sm, tiny):
    model, tokenizer = tiny
    text = BEFORE + AFTER
    ids = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        base = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(base[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert sm.generate_from_prompt(text, max_new_tokens=8).text == expected


def test_training_encodes_a_template_that_ends_in_a_space_as_inference_heals_it(sm):
    template = TEMPLATES["llamaindex-text-qa"]
    example = build_example(sm, question="Who wrote Hamlet?", passages=["Hamlet is a play by Shakespeare."],
                            answer="Shakespeare", k=4, template=template)
    healed, _ = heal(render_template(template, "Who wrote Hamlet?", ["Hamlet is a play by Shakespeare."], 4))
    prompt = sm.encode(healed)
    target = sm.tokenizer(" Shakespeare", add_special_tokens=False)["input_ids"] + [sm.tokenizer.eos_token_id]
    assert example.input_ids == prompt + target and example.answer_length == len(target)


def test_stop_strings_match_the_answer_as_returned_not_the_healed_spaces(sm):
    healed_prompt = PromptParts(BEFORE, 8, AFTER)
    full = sm.generate_from_prompt(healed_prompt, max_new_tokens=8)
    assert len(full.text) > 2 and not full.text.startswith(" ")  # the healed space is not part of the answer
    # " " + the answer's first characters is in the raw generated text only: it must not stop the answer
    raw_only = " " + full.text[:2]
    assert raw_only not in full.text
    for run in (sm.generate_from_prompt, lambda p, **s: _streamed(sm, p, **s)):
        out = run(healed_prompt, max_new_tokens=8, stop=[raw_only])
        assert (out.text, out.usage, out.finish_reason) == (full.text, full.usage, full.finish_reason)
    # a stop string in the answer as returned cuts it there, and finish_reason says so
    visible_stop = full.text[1:3]
    for run in (sm.generate_from_prompt, lambda p, **s: _streamed(sm, p, **s)):
        cut = run(healed_prompt, max_new_tokens=8, stop=[visible_stop])
        assert cut.text == full.text[:full.text.index(visible_stop)] and cut.finish_reason == "stop"
        assert cut.usage.completion_tokens <= full.usage.completion_tokens


def _streamed(sm, prompt, **settings):
    stream = sm.stream_from_prompt(prompt, **settings)
    text = "".join(stream)
    assert text == stream.result.text
    return stream.result
