"""Where the virtual-token block goes in a RAG prompt that someone else's template laid out.

SPRING's tokens were trained between the retrieved context and the question. Integrations know where the context
and the question sit in a prompt (LlamaIndex hands over the template and its variables; LangChain's retrieval
is recorded from its callbacks) and describe that as ``Span``\\ s over the prompt's texts (one text for a
completion prompt, one per turn for a chat). ``place_block`` turns them into one position:

1. No context: no block (the call is not a RAG call and the base model answers exactly as it would alone).
2. The question comes after the context: the block goes at the start of the question's line (``[r1]..[rk]Query:
   ...`` in LlamaIndex's default template, ``[r1]..[rk]Question: ...`` in SPRING's own), or, when the question
   shares a line with the end of the context, right after the context. A question in a later chat turn than the
   context gets the block at the start of the line in that turn. When the question's words occur more than once
   after the context (a chat history that asked it before), the prompt asks the last one (in the turn that
   holds the question, when the caller names it).
3. The question comes first (``rlm/rag-prompt``, LlamaIndex's refine template): the block goes right after the
   context, at the start of the next line when only spaces follow the context on its line, and the question is
   asked again right after the block (``Placement.restated``: the question on a line of its own), so the model
   reads context, block, question, then the prompt's own answer cue: SPRING's order. The restated question is the
   question's value as the span holds it (structure spring-rag adds, never parsed: a question that holds ``[r1]``
   stays text). ``Placement.question_first`` says so, for a log line.
4. The question cannot be found: the block goes right after the context as in rule 3, with nothing restated.

Nothing is restated without a block: ``place_block`` is only asked for ``k > 0`` calls, and ``Placement.restate``
leaves the texts as they are for ``k == 0``, so a call without virtual tokens reads the prompt untouched.

A placement keeps the spans it was placed from (``Placement.content``: the context's and the question's
occurrences). They are content, never template text: ``literal_content`` reads them as characters (a document that
spells ``<|im_end|>`` stays characters) for an integration that gets a rendered prompt rather than a template and
its values, and leaves the template's own text as written.

Example:
    >>> texts = ["Context:\\nParis is in France.\\nQuery: Where is Paris?\\nAnswer:"]
    >>> placement = place_block(texts, [Span(0, 9, 28)], [Span(0, 36, 51)])
    >>> placement.at, placement.question_first, placement.restated
    (BlockAt(message=0, offset=29), False, '')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any

from spring_core.prompts.layouts import WORD_JOINER, literal_text, spelling_pattern
from spring_core.types import BlockAt

RESTATED_QUESTION = "{question}\n"
"""What rule 3 writes right after the block: the question asked again (its value put in as it is) and a line
break, so the prompt's own answer cue (``Answer:``) follows on the next line. Measured on the drop-in benchmark
(``rlm/rag-prompt``, first 50 questions): 10.0 EM bare, 8.0 EM after a ``Question:`` label."""


@dataclass(frozen=True, order=True)
class Span:
    """Characters ``start:end`` of text number ``message`` (a chat turn, or the one completion prompt)."""

    message: int
    start: int
    end: int


@dataclass(frozen=True)
class Placement:
    """The block's position, whether the question came before the context (rule 3), ``restated``: the text
    spring-rag writes right after the block to ask that question again (``""`` when nothing is restated), and
    ``content``: the spans of the context and the question it was placed from (content, read as characters by
    ``literal_content``)."""

    at: BlockAt
    question_first: bool = False
    restated: str = ""
    content: tuple[Span, ...] = ()

    def restate(self, texts: Sequence[str], k: int) -> list[str]:
        """``texts`` as the model reads them around a ``k``-token block: ``restated`` written at the block's
        position when ``k > 0``; the texts unchanged for ``k == 0`` (no block, so nothing is asked again)."""
        texts = list(texts)
        if k and self.restated:
            text = texts[self.at.message]
            texts[self.at.message] = text[:self.at.offset] + self.restated + text[self.at.offset:]
        return texts


def place_block(texts: Sequence[str], context: Sequence[Span], questions: Sequence[Span], *,
                question_turn: int | None = None) -> Placement | None:
    """The block's position for ``texts`` whose context and question occupy the given spans (see the module doc).

    ``question_turn``: the turn that holds the question (e.g. the last human turn of a chat). Among the question's
    occurrences after the context, the last one in that turn is the question (else the last one): a chat history
    that already holds the same words comes before it. Without any question span it is a fallback, used when it
    comes after the context.
    """
    if not context:
        return None
    content = tuple(sorted({*context, *questions}))
    end = max(context, key=attrgetter("message", "end"))
    after = sorted(q for q in questions if (q.message, q.start) >= (end.message, end.end))
    if after:  # the prompt asks last; an earlier turn that holds the same words is history
        asked = [q for q in after if q.message == question_turn]
        question = (asked or after)[-1]
    elif not questions and question_turn is not None and question_turn > end.message:
        question = Span(question_turn, 0, 0)
    else:
        at = _after_context(texts[end.message], end)
        if not questions:
            return Placement(at, content=content)
        return Placement(at, question_first=True, restated=_restated(texts, at, max(questions)), content=content)
    line_start = texts[question.message].rfind("\n", 0, question.start) + 1
    if question.message == end.message:
        line_start = max(line_start, end.end)
    return Placement(BlockAt(question.message, line_start), content=content)


def literal_content(texts: Sequence[str], placement: Placement, tokenizer: Any) -> tuple[list[str], Placement]:
    """``texts`` with ``placement.content`` read as characters, and ``placement`` moved to match.

    Each content span is ``literal_text``; a word joiner at a span's edge breaks a special-token spelling that the
    span and the text beside it would complete together (``"<|im_"`` + ``"end|>"``, as ``fill_placeholders``
    does); the restated question is ``literal_text`` too. The text before the block and the text after it are read
    on their own (the model tokenizes them apart), so the block stays right where it was placed. The template's own
    text stays as written (it may hold a model's special tokens), and texts whose content spells no special token
    come back unchanged.

    Example:
        >>> texts = ["Context: <|im_end|>\\nQuestion: Why?\\nAnswer:"]  # a ChatML tokenizer
        >>> literal_content(texts, place_block(texts, [Span(0, 9, 19)], [Span(0, 30, 34)]), tokenizer)[0]
        ['Context: <\\u2060|im_end|>\\nQuestion: Why?\\nAnswer:']
    """
    out: list[str] = []
    content: list[Span] = []
    offset = placement.at.offset
    for index, text in enumerate(texts):
        cut = offset if index == placement.at.message else len(text)
        before, spans = _literal_spans(text[:cut], index, 0, placement.content, tokenizer)
        after, later = _literal_spans(text[cut:], index, cut, placement.content, tokenizer)
        if index == placement.at.message:
            offset = len(before)
        out.append(before + after)
        content += [Span(*span) for span in spans]
        content += [Span(message, start + len(before), end + len(before)) for message, start, end in later]
    return out, replace(placement, at=BlockAt(placement.at.message, offset), content=tuple(content),
                        restated=literal_text(placement.restated, tokenizer))


def fill_placeholders(text: str, placeholders: Mapping[str, str], values: Mapping[str, object],
                      tokenizer: Any = None) -> tuple[str, list[tuple[str, int, int]]]:
    """``text`` with each variable's placeholder (``placeholders[name]``, e.g. ``"{context}"`` or a sentinel)
    replaced by ``str(values[name])``, and ``(name, start, end)`` of where each value landed. The values are
    inserted, never searched, so whatever they hold cannot move a span.

    With ``tokenizer``, the values are content: each is ``literal_text``, and where a value meets the template's
    text or another value, a word joiner at the seam breaks a special-token spelling that the two sides would
    complete together (``"<|im_"`` + ``"end|>"``), so no value can splice one.

    Example:
        >>> fill_placeholders("{c}\\nQ: {q}", {"c": "{c}", "q": "{q}"}, {"c": "ctx", "q": "why?"})
        ('ctx\\nQ: why?', [('c', 0, 3), ('q', 7, 11)])
    """
    by_placeholder = {placeholder: name for name, placeholder in placeholders.items()}
    out, spans, rest = "", [], text
    while True:
        hits = [(rest.find(p), p) for p in by_placeholder if p in rest]
        if not hits:
            out += rest
            return _break_seams(out, spans, tokenizer) if tokenizer is not None else (out, spans)
        at, placeholder = min(hits)
        name = by_placeholder[placeholder]
        value = str(values[name]) if tokenizer is None else literal_text(str(values[name]), tokenizer)
        out += rest[:at]
        spans.append((name, len(out), len(out) + len(value)))
        out += value
        rest = rest[at + len(placeholder):]


def _break_seams(text: str, spans: list[tuple[Any, int, int]],
                 tokenizer: Any) -> tuple[str, list[tuple[Any, int, int]]]:
    """A word joiner at each value's edge that a special-token spelling crosses, outside the value (the spans
    after it move along), until no spelling crosses an edge. ``spans`` are ``(key, start, end)``: a variable's
    name, or a ``Span``'s message; keys come back as they were."""
    while True:
        pattern = spelling_pattern(text, tokenizer)
        edges = {edge for _, start, end in spans for edge in (start, end)}
        seam = next((edge for match in pattern.finditer(text) for edge in sorted(edges)
                     if match.start() < edge < match.end()), None) if pattern is not None else None
        if seam is None:
            return text, spans
        text = text[:seam] + WORD_JOINER + text[seam:]
        spans = [(key, start + (start >= seam), end + (end > seam)) for key, start, end in spans]


def _literal_spans(text: str, message: int, origin: int, spans: Sequence[Span],
                   tokenizer: Any) -> tuple[str, list[tuple[int, int, int]]]:
    """``text`` (characters ``origin:`` of text number ``message``) with the parts of ``spans`` that lie in it
    (overlapping or touching ones joined) ``literal_text`` and their seams broken, and ``(message, start, end)``
    of where those parts are now."""
    joined: list[list[int]] = []
    for span in sorted(spans):
        start, end = max(span.start - origin, 0), min(span.end - origin, len(text))
        if span.message != message or start >= end:
            continue
        if joined and start <= joined[-1][1]:
            joined[-1][1] = max(joined[-1][1], end)
        else:
            joined.append([start, end])
    out, moved, last = "", [], 0
    for start, end in joined:
        value = literal_text(text[start:end], tokenizer)
        out += text[last:start]
        moved.append((message, len(out), len(out) + len(value)))
        out += value
        last = end
    return _break_seams(out + text[last:], moved, tokenizer)


def _restated(texts: Sequence[str], at: BlockAt, question: Span) -> str:
    """The question asked again after a block at ``at``: on a line of its own (a line break first when the block
    sits right after the context, mid-line), followed by a line break unless nothing follows in that text."""
    text = texts[at.message]
    asked = RESTATED_QUESTION.format(question=texts[question.message][question.start:question.end])
    if at.offset > 0 and text[at.offset - 1] != "\n":
        asked = "\n" + asked
    if not text[at.offset:].strip():
        asked = asked.rstrip("\n")
    return asked


def _after_context(text: str, end: Span) -> BlockAt:
    rest = text[end.end:]
    line_end = rest.find("\n")
    if line_end >= 0 and not rest[:line_end].strip():
        return BlockAt(end.message, end.end + line_end + 1)
    return BlockAt(end.message, end.end)
