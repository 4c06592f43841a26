"""QA metrics: the official SQuAD v1.1 normalisation, EM, token F1, FlashRAG's acc, first-line cut, aggregation."""

from __future__ import annotations

import pytest

from spring_core.metrics import (
    accuracy,
    aggregate,
    exact_match,
    f1_score,
    first_line,
    normalize_answer,
    score,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Eiffel Tower!", "eiffel tower"),
        # Punctuation is deleted, not replaced by a space, exactly as in the official script.
        ("The  Eiffel-Tower!", "eiffeltower"),
        ("  A cat, an owl and THE dog.  ", "cat owl and dog"),
        ("theatre another", "theatre another"),  # articles only as whole words
        ("\tNew\nYork\u00a0City ", "new york city"),
        ("(1889)", "1889"),
        ("the", ""),
        ("", ""),
    ],
)
def test_normalize_answer_matches_squad(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_after_normalisation():
    assert exact_match("The  Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("The  Eiffel-Tower!", ["eiffel tower"]) == 0.0
    assert exact_match("Eiffel Tower in Paris", ["eiffel tower"]) == 0.0


def test_exact_match_is_max_over_golds():
    assert exact_match("Paris", ["London", "paris.", "Rome"]) == 1.0
    assert exact_match("Paris", ["London", "Rome"]) == 0.0


def test_f1_partial_overlap_by_hand():
    # prediction tokens: eiffel tower in paris (4); gold: eiffel tower (2); shared 2
    # precision 2/4, recall 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert f1_score("The Eiffel Tower in Paris", ["the Eiffel Tower"]) == pytest.approx(2 / 3)
    # prediction: new york (2); gold: new york city (3); P = 1, R = 2/3, F1 = 0.8
    assert f1_score("New York", ["New York City"]) == pytest.approx(0.8)


def test_f1_counts_repeated_tokens_once_per_occurrence():
    # prediction: paris paris paris (3); gold: paris (1); shared min(3, 1) = 1 -> P 1/3, R 1, F1 = 0.5
    assert f1_score("paris paris paris", ["Paris"]) == pytest.approx(0.5)


def test_f1_is_max_over_golds_and_bounds():
    golds = ["London", "New York City", "New York"]
    assert f1_score("New York", golds) == 1.0
    assert f1_score("Berlin", golds) == 0.0
    assert f1_score("the", ["a"]) == 0.0  # both normalise to nothing: no shared token, as in SQuAD v1.1


def test_accuracy_is_containment_not_equality():
    prediction = "The answer is the Eiffel Tower, in Paris."
    assert accuracy(prediction, ["Eiffel Tower"]) == 1.0
    assert exact_match(prediction, ["Eiffel Tower"]) == 0.0
    assert accuracy("Eiffel", ["Eiffel Tower"]) == 0.0  # the gold must be inside the prediction, not the reverse
    assert accuracy("It is Rome.", ["London", "rome"]) == 1.0


def test_accuracy_never_counts_an_empty_gold():
    assert accuracy("anything at all", ["the", "!!"]) == 0.0
    assert accuracy("", [""]) == 0.0


def test_predictions_are_not_truncated():
    long_prediction = "word " * 500 + "Paris"
    assert accuracy(long_prediction, ["Paris"]) == 1.0
    assert f1_score(long_prediction, ["Paris"]) == pytest.approx(2 * (1 / 501) / (1 / 501 + 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris\nThe Eiffel Tower is in Paris.", "Paris"),
        ("  Paris  \n\nmore", "Paris"),
        ("\n\n Paris\nmore", "Paris"),
        ("Paris", "Paris"),
        ("", ""),
    ],
)
def test_first_line(text, expected):
    assert first_line(text) == expected


def test_first_line_changes_the_scores():
    prediction = "Paris\nIt is the capital of France and also home to London Bridge replicas."
    assert score(prediction, ["Paris"])["em"] == 0.0
    assert score(first_line(prediction), ["Paris"]) == {"em": 1.0, "f1": 1.0, "acc": 1.0}


def test_score_keys_and_values():
    result = score("New York", ["New York City"])
    assert result == {"em": 0.0, "f1": pytest.approx(0.8), "acc": 0.0}


@pytest.mark.parametrize("metric", [exact_match, f1_score, accuracy, score])
def test_empty_answers_raise(metric):
    with pytest.raises(ValueError, match="answers is empty"):
        metric("Paris", [])


@pytest.mark.parametrize("metric", [exact_match, f1_score, accuracy, score])
def test_a_bare_string_is_not_a_list_of_answers(metric):
    with pytest.raises(TypeError, match=r"pass \[answer\]"):
        metric("Paris", "Paris")


def test_aggregate_gives_percentages_and_count():
    rows = [
        {"em": 1.0, "f1": 1.0, "acc": 1.0},
        {"em": 0.0, "f1": 0.5, "acc": 1.0},
        {"em": 0.0, "f1": 0.0, "acc": 0.0},
    ]
    assert aggregate(rows) == {"em": 33.33, "f1": 50.0, "acc": 66.67, "count": 3}


def test_aggregate_of_scored_predictions():
    rows = [score("Paris", ["Paris"]), score("New York", ["New York City"])]
    assert aggregate(rows) == {"em": 50.0, "f1": 90.0, "acc": 50.0, "count": 2}


def test_aggregate_errors():
    with pytest.raises(ValueError, match="empty"):
        aggregate([])
    with pytest.raises(ValueError, match=r"scores\[1\]"):
        aggregate([{"em": 1.0, "f1": 1.0}, {"em": 1.0}])
