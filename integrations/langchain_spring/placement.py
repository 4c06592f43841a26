"""Where the block goes in the rendered messages of a LangChain call.

The signals, in order:

1. **The run's retrievals** (``tracking.RetrievalTracker``): the retrieved documents' texts are found verbatim in
   the messages (``format_docs``, ``create_stuff_documents_chain`` and the tutorials join ``page_content``), and so
   is the retriever's query.
2. **The run's prompt-template variables**, for retrieval that LangChain does not see (the app called
   ``vector_store.similarity_search`` itself, as LangGraph's RAG tutorial does, and filled a template): the value
   of a context variable (``context``, ``documents``, ``docs``, ``passages``, ``sources``, ...) and of a question
   variable (``question``, ``query``, ``input``, ...) are found verbatim in the messages; ``SpringRAGMiddleware``
   hands the same two values over for LangChain 1.x agents.
3. **A context label, as a last resort** for apps that show neither: an earlier system message with a line that
   names the context (``context``, ``documents``, ``passages``, ``sources``) and ends in ``:``, and a last human
   message. The block goes at the start of that human message.

``spring_core.prompts.placement.place_block`` then puts the block at the start of the question's line after the context
(the last human turn when the context sits in an earlier message), or right after the context when the question
comes first (``rlm/rag-prompt``); then, when the question's text was found (signals 1 and 2), the placement also
carries the question to ask again right after the block (``Placement.restated``, on a line of its own), so the
model reads context, block, question and the prompt's own answer cue, SPRING's order. Calls without a block
(``k == 0``) read the prompt untouched. Values are only ever located, never parsed: a document that equals the
question (FAQ corpora), is a prefix of it or a single word of it (a title-only document) is told apart from the
question by position (see ``context_and_question``). Anything else is not a RAG call: no block, the base model as it
is.

The placement keeps the spans it was placed from (``Placement.content``) and, after a retrieval, the values of the
run's context variables (``format_docs`` adds the documents' titles): they are content, which ``SpringLLM`` reads as
characters (``spring_core.prompts.placement.literal_content``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from langchain_spring.tracking import Retrieval, RunSignals
from spring_core.prompts.placement import Placement, Span, place_block

_LABEL_RE = re.compile(r"(?im)^[^\n]*\b(?:context|documents?|passages?|sources?)\b[^\n]*:[ \t]*$")
CONTEXT_VARIABLE = re.compile(r"(?:^|_)(?:context|contexts|documents?|docs|passages?|sources?|retrieved|knowledge|"
                              r"summaries)(?:_|$)", re.I)
"""Template variable names that hold retrieved context (``context``, ``docs``, ``retrieved_documents``, ...)."""
QUESTION_VARIABLE = re.compile(r"(?:^|_)(?:question|query|input|user_input|ask)(?:_|$)", re.I)
"""Template variable names that hold the question (``question``, ``query``, ``input``, ...)."""


def find_placement(texts: Sequence[str], roles: Sequence[str], signals: RunSignals) -> tuple[Placement | None, str]:
    """The block's position in ``texts`` (one per message; ``roles`` ``system``/``user``/``assistant``) and the
    signal that found it: ``"retrieval"``, ``"template"``, ``"label"`` (the last resort), or ``""`` (none: not a
    RAG call)."""
    last_user = max((i for i, role in enumerate(roles) if role == "user"), default=None)
    if signals.retrievals:
        placement = retrieval_placement(texts, signals.retrievals, last_user)
        if placement is not None:  # a context variable's value (format_docs' titles too) is content as well
            values = [span for inputs in signals.template_inputs for name, value in inputs.items()
                      if CONTEXT_VARIABLE.search(name) for span in occurrences(texts, value)]
            return replace(placement, content=tuple(sorted({*placement.content, *values}))), "retrieval"
    for inputs in reversed(signals.template_inputs):  # the template filled last rendered these messages
        placement = variables_placement(texts, inputs, last_user)
        if placement is not None:
            return placement, "template"
    placement = label_placement(texts, roles, last_user)
    return placement, "label" if placement is not None else ""


def retrieval_placement(texts: Sequence[str], retrievals: Sequence[Retrieval],
                        last_user: int | None = None) -> Placement | None:
    """The block's position from the run's retrievals: their documents' texts and queries, found in ``texts``."""
    documents = [span for r in retrievals for text in r.texts for span in occurrences(texts, text)]
    questions = [span for r in retrievals for span in occurrences(texts, r.query)]
    return place_block(texts, *context_and_question(documents, questions), question_turn=last_user)


def variables_placement(texts: Sequence[str], variables: Mapping[str, str],
                        last_user: int | None = None) -> Placement | None:
    """The block's position from a prompt template's variables (or ``SpringRAGMiddleware``'s context and
    question): the values of the context and question variables, found in ``texts``."""
    documents = [span for name, value in variables.items() if CONTEXT_VARIABLE.search(name)
                 for span in occurrences(texts, value)]
    questions = [span for name, value in variables.items() if QUESTION_VARIABLE.search(name)
                 for span in occurrences(texts, value)]
    return place_block(texts, *context_and_question(documents, questions), question_turn=last_user)


def context_and_question(documents: Sequence[Span], questions: Sequence[Span]) -> tuple[list[Span], list[Span]]:
    """Tell the context's spans from the question's when their texts overlap.

    * A document occurrence strictly inside an occurrence of the question (a title-only document ``"Harvard"`` in
      ``"Who is Harvard named after?"``, a document that is a prefix of the question) is the question's text.
    * A document equal to the question (an FAQ entry) occurs both in the context and where the prompt asks: the
      prompt asks last (SPRING's order), so the question's last occurrence is the question and the others are
      context.
    """
    context = [d for d in documents if not any(d != q and d.message == q.message and q.start <= d.start
                                               and d.end <= q.end for q in questions)]
    if any(d in questions for d in context):
        asked = max(questions)
        return [d for d in context if d != asked], [asked]
    return context, list(questions)


def label_placement(texts: Sequence[str], roles: Sequence[str], last_user: int | None) -> Placement | None:
    """The last resort: a labelled context in an earlier system message, the block before the last human turn."""
    if last_user is None or last_user == 0:
        return None
    for index in range(last_user):
        label = _LABEL_RE.search(texts[index]) if roles[index] == "system" else None
        if label is not None and texts[index][label.end():].strip():
            return place_block(texts, [Span(index, label.end(), len(texts[index]))], [], question_turn=last_user)
    return None


def occurrences(texts: Sequence[str], needle: str) -> list[Span]:
    """Every occurrence of ``needle`` (without its surrounding spaces) in ``texts``."""
    needle = needle.strip()
    if not needle:
        return []
    spans = []
    for index, text in enumerate(texts):
        start = text.find(needle)
        while start >= 0:
            spans.append(Span(index, start, start + len(needle)))
            start = text.find(needle, start + 1)
    return spans
