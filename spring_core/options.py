"""Every vocabulary of spring-rag and the one function that validates each option.

Public entry points (``SpringModel``, the engine, both integrations, the CLI) turn their arguments into typed
values here and nowhere else, so a bad value gets the same ``OptionError`` (a ``SpringError``) naming the argument
and what is allowed, whichever door it came through. ``bool`` is not an integer here, NaN and infinities are not
numbers, and a string, bytes or a mapping is not a list of passages.

Vocabularies:

=====================  ==========================================================================================
``DECODINGS``          how passages are read: ``stuff`` (all in one prompt), ``rag-token``, ``rag-sequence``,
                       ``rag-sequence-fast`` (one by one, mixed by their retriever scores)
``KNOWLEDGE``          where documents' knowledge goes: ``icl`` (prompt), ``prag`` (adapters), ``combine`` (both)
``LAYOUTS``            the prompt layout: ``raw`` (the paper's completion prompt) or ``chat`` (the chat template)
``MISSING_ADAPTER``    a document without an adapter: ``error``, or ``icl`` (read its text instead)
=====================  ==========================================================================================

Example:
    >>> generation_settings({"max_new_tokens": 8, "stop": "\\n"}).stop
    ('\\n',)
    >>> virtual_token_count(True, 50)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    spring_core.errors.MarkerError: k = True is not an integer: this model has n = 50 virtual tokens, ...
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from spring_core.errors import MarkerError, OptionError
from spring_core.types import GenerationSettings, Passage, PromptParts

DECODINGS = ("stuff", "rag-token", "rag-sequence", "rag-sequence-fast")
KNOWLEDGE = ("icl", "prag", "combine")
LAYOUTS = ("raw", "chat")
MISSING_ADAPTER = ("error", "icl")
MERGES = ("sum", "mean")  # how several documents' adapters combine (spring_core.parametric.lora.merge_adapters)
SETTINGS = ("max_new_tokens", "min_new_tokens", "temperature", "top_p", "seed", "stop")
SEED_RANGE = (0, 2**64 - 1)  # what torch.manual_seed accepts


def choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``, else an ``OptionError`` listing them."""
    if not isinstance(value, str) or value not in allowed:
        raise OptionError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def integer(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """An integer (``int`` or a numpy integer; not a ``bool``) within ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low) or (
            high is not None and value > high):
        bounds = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"
        raise OptionError(f"{name} must be {bounds}, got {value!r}")
    return int(value)


def number(name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False) -> float:
    """A finite real number (not a ``bool``) in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    try:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok or value < low or value > high or (low_open and value == low):
        span = f"{'(' if low_open else '['}{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise OptionError(f"{name} must be a finite number {'in ' if math.isfinite(high) else ''}{span}, "
                          f"got {value!r}")
    return float(value)


def text(name: str, value: Any, *, allow_empty: bool = True) -> str:
    """A ``str`` that is valid Unicode (no lone surrogate), non-empty unless ``allow_empty``."""
    if not isinstance(value, str):
        raise OptionError(f"{name} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise OptionError(f"{name} holds an invalid character at index {exc.start} (a lone surrogate "
                          f"{value[exc.start]!r}); pass valid Unicode text") from None
    if not allow_empty and not value.strip():
        raise OptionError(f"{name} must not be empty")
    return value


def question(value: Any) -> str:
    """A question: a non-empty string."""
    return text("question", value, allow_empty=False)


def items(name: str, value: Any, what: str) -> list[Any]:
    """A list (or other sequence) of ``what``; a string, bytes or a mapping is one item, not a list of them."""
    if isinstance(value, (str, bytes, Mapping, PromptParts)) or not isinstance(value, Sequence):
        hint = " (wrap a single one in a list)" if isinstance(value, (str, Mapping, PromptParts)) else ""
        raise OptionError(f"{name} must be a list of {what}, got a {type(value).__name__}{hint}")
    return list(value)


def passages(value: Any, *, required: bool = False) -> list[Passage]:
    """A list of passages (strings, or mappings with a string ``text`` and an optional string ``title``);
    ``None`` is no passages unless they are ``required``."""
    if value is None and not required:
        return []
    value = items("passages", value, "strings or {'title', 'text'} mappings")
    for i, passage in enumerate(value):
        if isinstance(passage, str):
            text(f"passages[{i}]", passage)
        elif isinstance(passage, Mapping) and isinstance(passage.get("text"), str):
            text(f"passages[{i}]['text']", passage["text"])
            if passage.get("title") is not None:
                text(f"passages[{i}]['title']", passage["title"])
        else:
            raise OptionError(f"passages[{i}] must be a string or a mapping with a string 'text', got "
                              f"{passage!r:.80}")
    return value


def prompt(value: Any) -> PromptParts:
    """A finished prompt: ``PromptParts``, or a string (plain text: no block, whatever it holds)."""
    if isinstance(value, str):
        value = PromptParts(value)
    if not isinstance(value, PromptParts):
        raise OptionError(f"prompt must be a string or PromptParts, got {type(value).__name__}")
    try:
        whole = value.before + value.after
        whole.encode("utf-8")
    except (TypeError, UnicodeEncodeError):  # text() names the fault
        text("prompt", value.before)
        text("prompt", value.after)
        raise
    if not value.k and not whole:
        raise OptionError("prompt must not be empty")
    return value


def virtual_token_count(value: Any, n: int, name: str = "k") -> int:
    """A block size ``0 <= k <= n``; a ``MarkerError`` (an ``OptionError``) otherwise."""
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy integers too
    if not integral or not 0 <= value <= n:
        hint = "" if n else " (load an artifact with tokens= to use k > 0)"
        fault = "is out of range" if integral else "is not an integer"
        raise MarkerError(f"{name} = {value!r} {fault}: this model has n = {n} virtual tokens, so {name} must be "
                          f"an integer with 0 <= {name} <= {n}{hint}")
    return int(value)


def stop_strings(value: Any) -> tuple[str, ...]:
    """Stop strings: one string or a list of strings (empty ones dropped)."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if isinstance(values, (bytes, Mapping)) or not isinstance(values, Sequence):
        raise OptionError(f"stop must be a string or a list of strings, got {type(value).__name__}")
    for i, stop in enumerate(values):
        text(f"stop[{i}]", stop)
    return tuple(stop for stop in values if stop)


def generation_settings(values: Mapping[str, Any]) -> GenerationSettings:
    """``GenerationSettings`` from keyword settings, each checked; an unknown name is an ``OptionError`` naming
    the known ones.

    Settings are immutable, so the check of values seen before is remembered: a component that sends the same
    defaults on every call checks them once. The values' types are part of what is remembered (``True`` is not
    ``1`` here), and values that cannot be remembered (unhashable) are simply checked again.
    """
    try:
        key = tuple(sorted((name, type(value), tuple(value) if isinstance(value, list) else value)
                           for name, value in values.items()))
        return _remembered_settings(key)
    except TypeError:  # an unhashable value (or names of mixed types): check it now
        return _settings(values)


@functools.lru_cache(maxsize=256)
def _remembered_settings(key: tuple[tuple[str, type, Any], ...]) -> GenerationSettings:
    values = {name: list(value) if kind is list else value for name, kind, value in key}
    return _settings(values)


def _settings(values: Mapping[str, Any]) -> GenerationSettings:
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise OptionError(f"unknown generation setting(s) {', '.join(unknown)}; use {', '.join(SETTINGS)}")
    defaults = GenerationSettings()
    max_new = integer("max_new_tokens", values.get("max_new_tokens", defaults.max_new_tokens), low=1)
    seed = values.get("seed")
    return GenerationSettings(
        max_new_tokens=max_new,
        min_new_tokens=integer("min_new_tokens", values.get("min_new_tokens", 0), low=0, high=max_new),
        temperature=number("temperature", values.get("temperature", 0.0), low=0.0),
        top_p=number("top_p", values.get("top_p", 1.0), low=0.0, high=1.0, low_open=True),
        seed=None if seed is None else integer("seed", seed, low=SEED_RANGE[0], high=SEED_RANGE[1]),
        stop=stop_strings(values.get("stop")),
    )


def batch_size(value: Any) -> int:
    """How many prompts one batched ``generate`` call reads: an integer >= 1."""
    return integer("batch_size", value, low=1)
