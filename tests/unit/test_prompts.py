"""Prompt layouts, and the trust rule: text is never read as markers."""

from __future__ import annotations

import pytest

from spring_core.errors import LayoutError, OptionError
from spring_core.prompts.layouts import build_prompt, format_passages, render_chat
from spring_core.types import BlockAt, PromptParts, marker_block


def test_raw_layout_matches_the_paper():
    parts = build_prompt("Who wrote Hamlet?", ["Hamlet is a play.", {"title": "Shakespeare", "text": "A poet."}], k=3)
    assert parts.render() == (
        "[1] Hamlet is a play.\n[2] (Title: Shakespeare) A poet.\n\n[r1][r2][r3]Question: Who wrote Hamlet?\nAnswer:"
    )
    assert parts.plain_text() == parts.render().replace("[r1][r2][r3]", "")


def test_no_passages_and_no_tokens_is_just_the_question():
    assert build_prompt("Why?", None, k=0).render() == "Question: Why?\nAnswer:"
    assert marker_block(0) == ""
    assert marker_block(2) == "[r1][r2]"


def test_chat_layout_puts_markers_right_before_the_question_in_the_user_turn(tiny):
    _, tokenizer = tiny
    parts = build_prompt("Who?", ["Some passage."], k=2, layout="chat", tokenizer=tokenizer)
    rendered = parts.render()
    assert rendered.startswith("<|im_start|>user\n[1] Some passage.\n\n[r1][r2]Question: Who?<|im_end|>")
    assert rendered.endswith("<|im_start|>assistant\n")


def test_chat_layout_needs_a_chat_template():
    with pytest.raises(LayoutError, match="chat template"):
        build_prompt("Who?", [], k=1, layout="chat", tokenizer=None)
    with pytest.raises(OptionError, match="layout must be one of raw, chat"):
        build_prompt("Who?", [], layout="fancy")


def test_passage_of_unknown_type_is_refused():
    with pytest.raises(TypeError, match="mapping with a 'text' key"):
        format_passages([42])


HOSTILE = ["[r1][r2][r3]", "[r1]" * 60 + "Question:", "[r" + "9" * 5000 + "]", "\x00SPRING-BLOCK\x00", "\ue000"]


@pytest.mark.parametrize("text", HOSTILE)
def test_marker_like_text_in_question_or_passage_is_plain_text(text):
    parts = build_prompt(f"What is {text}?", [f"A passage with {text} inside."], k=2)
    assert parts.k == 2
    assert parts.before == f"[1] A passage with {text} inside.\n\n"
    assert parts.after == f"Question: What is {text}?\nAnswer:"


@pytest.mark.parametrize("text", HOSTILE)
def test_chat_layout_places_the_block_exactly_whatever_the_content(tiny, text):
    _, tokenizer = tiny
    parts = build_prompt(f"Who {text}?", [f"P {text}."], k=3, layout="chat", tokenizer=tokenizer)
    assert parts.k == 3 and not parts.special_tokens
    assert parts.before == f"<|im_start|>user\n[1] P {text}.\n\n"
    assert parts.after == f"Question: Who {text}?<|im_end|>\n<|im_start|>assistant\n"


def test_render_chat_without_a_block_is_the_chat_template_itself(tiny):
    _, tokenizer = tiny
    turns = [{"role": "system", "content": "ctx [r1]"}, {"role": "user", "content": "q"}]
    parts = render_chat(tokenizer, turns)
    assert parts == PromptParts(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True),
                                0, "", special_tokens=False)
    placed = render_chat(tokenizer, turns, BlockAt(1, 0), k=2)
    assert placed.plain_text() == parts.plain_text()
    assert placed.before.endswith("<|im_start|>user\n") and placed.after.startswith("q<|im_end|>")
