"""Prompt layouts and the marker guard."""

from __future__ import annotations

import pytest

from spring_core.errors import MarkerError
from spring_core.prompts import (
    PromptParts,
    build_prompt,
    check_user_text,
    format_passages,
    marker_block,
    parse_prompt,
)


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
    with pytest.raises(ValueError, match="chat template"):
        build_prompt("Who?", [], k=1, layout="chat", tokenizer=None)
    with pytest.raises(ValueError, match="unknown prompt layout"):
        build_prompt("Who?", [], layout="fancy")


def test_passage_of_unknown_type_is_refused():
    with pytest.raises(TypeError, match="mapping with a 'text' key"):
        format_passages([42])


@pytest.mark.parametrize("k", [1, 5, 50])
def test_parse_round_trips_build(k):
    parts = build_prompt("Q?", ["P."], k=k)
    assert parse_prompt(parts.render(), n=50) == parts


def test_prompt_without_markers_parses_to_itself():
    assert parse_prompt("plain text [1] with a citation", n=50) == PromptParts("plain text [1] with a citation")


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("ctx [r1][r3] Q", "not \\[r1\\]\\[r2\\]..\\[rk\\] in order"),
        ("ctx [r2][r1] Q", "not \\[r1\\]\\[r2\\]..\\[rk\\] in order"),
        ("ctx [r2] Q", "not \\[r1\\]\\[r2\\]..\\[rk\\] in order"),
        ("ctx [r1][r2] middle [r1] Q", "2 separate marker blocks"),
        ("ctx [r1][r2][r3][r4] Q", "k = 4 virtual tokens but only n = 3"),
    ],
)
def test_malformed_blocks_raise(prompt, message):
    with pytest.raises(MarkerError, match=message):
        parse_prompt(prompt, n=3)


def test_markers_without_tokens_are_refused_by_the_raw_parser():
    with pytest.raises(MarkerError, match="no virtual tokens are loaded"):
        parse_prompt("ctx [r1] Q", n=0)


def test_non_strict_uses_the_last_well_formed_block_and_keeps_the_rest_as_text():
    prompt = "doc says [r1][r2] here\n\n[r1][r2][r3]Question: x"
    with pytest.warns(UserWarning, match="separate marker blocks"):
        parts = parse_prompt(prompt, n=5, strict=False)
    assert parts == PromptParts("doc says [r1][r2] here\n\n", 3, "Question: x")


def test_non_strict_prefers_the_block_before_the_question_over_one_quoted_in_it():
    prompt = "[1] ctx\n\n[r1][r2][r3]Question: what does [r1] mean?\nAnswer:"
    with pytest.warns(UserWarning):
        parts = parse_prompt(prompt, n=50, strict=False)
    assert parts == PromptParts("[1] ctx\n\n", 3, "Question: what does [r1] mean?\nAnswer:")
    with pytest.warns(UserWarning):  # no block before a question: the longest wins over a later, shorter one
        parts = parse_prompt("a [r1][r2] b [r1] c", n=50, strict=False)
    assert parts == PromptParts("a ", 2, " b [r1] c")


def test_non_strict_cuts_k_to_n_and_keeps_surplus_markers_as_text():
    with pytest.warns(UserWarning, match="only n = 2"):
        parts = parse_prompt("ctx [r1][r2][r3] Q", n=2, strict=False)
    assert parts == PromptParts("ctx ", 2, "[r3] Q")


def test_non_strict_without_any_valid_block_reads_everything_as_text():
    with pytest.warns(UserWarning):
        parts = parse_prompt("ctx [r2][r3] Q", n=5, strict=False)
    assert parts == PromptParts("ctx [r2][r3] Q")


def test_markers_in_user_text_are_rejected_or_warned():
    with pytest.raises(MarkerError, match=r"'\[r7\]'"):
        check_user_text(["fine", "sneaky [r7] text"], strict=True)
    with pytest.warns(UserWarning, match="strict=False"):
        check_user_text(["sneaky [r7] text"], strict=False)
    check_user_text(["a citation [7] is fine", "so is [r] or [rx]"], strict=True)
