"""The README's main job: answer real SQuAD questions with and without the virtual-token block, side by side.

Example:
    >>> import io
    >>> from spring_core.demo import run_demo
    >>> # run_demo(count=3): SmolLM2 with its bundled trained tokens, printed side by side; here the tiny Llama
    >>> results = run_demo(model="./my-llama", tokens="my-tokens/", k=10, count=2, max_new_tokens=4, out=io.StringIO())
    >>> len(results), sorted(results[0])
    (2, ['answers', 'id', 'question', 'with_tokens', 'without_tokens'])
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path
from typing import TextIO

from spring_core import options
from spring_core.data import demo_qa_path, read_qa
from spring_core.model.loading import DEFAULT_MODEL
from spring_core.model.spring_model import SpringModel
from spring_core.model.tokens import BUNDLED, VirtualTokens

DEFAULT_K = 50
"""The demo's block size when none is given (the artifact's ``n`` when it holds fewer)."""


def run_demo(*, model: str = DEFAULT_MODEL, tokens: str | Path | None = None, k: int | None = None, count: int = 3,
             data: str | Path | None = None, max_new_tokens: int = 32, out: TextIO | None = None) -> list[dict]:
    """Answer ``count`` (at least 1) questions from ``data`` (default: the bundled SQuAD slice) with k = 0 and with
    ``k`` tokens, printed to ``out`` (default: ``sys.stdout`` at the time of the call).

    Without ``tokens`` the default model uses its bundled trained artifact (``smollm2-135m-squad``); any other
    model gets an *untrained* block of ``k`` tokens, initialised from the paper's instruction sentence. ``k``: at
    most the artifact's ``n`` (``MarkerError`` otherwise); default ``DEFAULT_K``, or ``n`` when the artifact has
    fewer.
    """
    options.integer("count", count, low=1)
    if k is not None:
        options.integer("k", k, low=0)
    out = sys.stdout if out is None else out
    started = time.perf_counter()
    if tokens is None and model == DEFAULT_MODEL:
        tokens = BUNDLED[0]
    sm = SpringModel.from_pretrained(model, tokens=tokens)
    if sm.tokens is None:
        sm = sm.with_tokens(VirtualTokens.from_text(sm, n=max(DEFAULT_K if k is None else k, 1), layout="chat"))
        origin = f"untrained, initialised from the instruction sentence ({sm.n} tokens)"
    else:
        origin = f"trained artifact {tokens} ({sm.n} tokens)"
    k = min(DEFAULT_K, sm.n) if k is None else options.virtual_token_count(k, sm.n)
    rows = _spread_over_titles(read_qa(data or demo_qa_path()), count)
    print(f"model: {sm.name}   layout: {sm.layout}   virtual tokens: {origin}", file=out)
    print(f"loaded in {time.perf_counter() - started:.1f} s; answering {len(rows)} questions\n", file=out)
    results = []
    for row in rows:
        plain = sm.generate(row["question"], row.get("passages"), k=0, max_new_tokens=max_new_tokens)
        spring = sm.generate(row["question"], row.get("passages"), k=k, max_new_tokens=max_new_tokens)
        results.append({"id": row["id"], "question": row["question"], "answers": row["answers"],
                        "without_tokens": plain.text, "with_tokens": spring.text})
        print(f"Q: {row['question']}\n   gold: {' | '.join(row['answers'])}", file=out)
        print(_side_by_side("k = 0 (base model)", plain.text, f"k = {k} ([r1]..[r{k}])", spring.text), file=out)
    return results


def _spread_over_titles(rows: list[dict], count: int) -> list[dict]:
    """Prefer questions about different articles, so three questions show three topics."""
    picked, titles = [], set()
    for row in rows:
        title = (row.get("passages") or [{}])[0]
        title = title.get("title") if isinstance(title, dict) else None
        if title not in titles:
            picked.append(row)
            titles.add(title)
    picked += [row for row in rows if row not in picked]
    return picked[:count]


def _side_by_side(left_title: str, left: str, right_title: str, right: str, width: int = 48) -> str:
    left_lines = textwrap.wrap(left.strip() or "(empty)", width) or [""]
    right_lines = textwrap.wrap(right.strip() or "(empty)", width) or [""]
    lines = [f"   {left_title:<{width}} | {right_title}", f"   {'-' * width}-+-{'-' * width}"]
    for index in range(max(len(left_lines), len(right_lines))):
        a = left_lines[index] if index < len(left_lines) else ""
        b = right_lines[index] if index < len(right_lines) else ""
        lines.append(f"   {a:<{width}} | {b}")
    return "\n".join(lines) + "\n"
