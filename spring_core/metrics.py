"""QA metrics: exact match, token F1 and FlashRAG's containment accuracy, with the SQuAD v1.1 normalisation.

Answers are normalised as the official SQuAD v1.1 script does: lower-case, drop every ASCII punctuation character
(without putting a space in its place, so ``"Eiffel-Tower"`` becomes ``"eiffeltower"``), drop the articles
``a``/``an``/``the`` and collapse whitespace. Each metric takes the best score over the gold answers. Predictions
are never truncated; ``first_line`` is there for scoring only the first line of a chatty answer.

Example:
    >>> normalize_answer("The  Eiffel Tower!")
    'eiffel tower'
    >>> score("the Eiffel Tower, Paris", ["Eiffel Tower"])
    {'em': 0.0, 'f1': 0.8, 'acc': 1.0}
    >>> aggregate([{"em": 1.0, "f1": 1.0}, {"em": 0.0, "f1": 0.5}])
    {'em': 50.0, 'f1': 75.0, 'count': 2}
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

METRICS = ("em", "f1", "acc")
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower-case, remove punctuation, remove articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def _check_answers(answers: Sequence[str]) -> Sequence[str]:
    if isinstance(answers, str):
        raise TypeError(f"answers must be a sequence of gold answers, got the string {answers!r}; pass [answer]")
    if len(answers) == 0:
        raise ValueError("answers is empty: a prediction can only be scored against at least one gold answer")
    return answers


def _token_f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    """Token F1 of one prediction against one gold answer, as in the official script (0 when nothing is shared)."""
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(gold) for gold in _check_answers(answers)))


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """The best token F1 (0..1) of the prediction over the gold answers."""
    tokens = normalize_answer(prediction).split()
    return max(_token_f1(tokens, normalize_answer(gold).split()) for gold in _check_answers(answers))


def accuracy(prediction: str, answers: Sequence[str]) -> float:
    """FlashRAG's ``acc``: 1.0 if any non-empty normalised gold answer is a substring of the normalised prediction."""
    predicted = normalize_answer(prediction)
    golds = (normalize_answer(gold) for gold in _check_answers(answers))
    return float(any(gold and gold in predicted for gold in golds))


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped: leading blank lines are skipped, the rest is cut off."""
    return text.strip().split("\n", 1)[0].strip()


def score(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """``{"em", "f1", "acc"}`` of one prediction, each in 0..1."""
    return {
        "em": exact_match(prediction, answers),
        "f1": f1_score(prediction, answers),
        "acc": accuracy(prediction, answers),
    }


def aggregate(scores: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric in percent (rounded to 2 decimals) plus ``count``; every row must have the same keys."""
    if len(scores) == 0:
        raise ValueError("no scores to aggregate: the list is empty")
    keys = list(scores[0])
    for number, row in enumerate(scores):
        if set(row) != set(keys):
            raise ValueError(f"scores[{number}] has keys {sorted(row)}, but scores[0] has {sorted(keys)}")
    result: dict[str, float] = {key: round(100 * sum(row[key] for row in scores) / len(scores), 2) for key in keys}
    result["count"] = len(scores)
    return result
