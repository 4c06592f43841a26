"""Where the block goes in the rendered messages of a LangChain call.

The signal, in order:

1. **The run's retrievals** (``tracking.RetrievalTracker``): the retrieved documents' texts are found verbatim in
   the messages (``format_docs``, ``create_stuff_documents_chain`` and the tutorials join ``page_content``), and so
   is the retriever's query. ``spring_core.placement.place_block`` then puts the block at the start of the
   question's line after the context (the last human turn when the context sits in an earlier message), or right
   after the context when the question comes first.
2. **A context label, as a last resort** for retrieval that LangChain does not see (e.g. a ``dynamic_prompt``
   middleware that calls ``vector_store.similarity_search`` itself): an earlier system message with a line that
   names the context (``context``, ``documents``, ``passages``, ``sources``) and ends in ``:``, and a last human
   message. The block goes at the start of that human message.

Anything else is not a RAG call: no block, the base model as it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_spring.tracking import Retrieval
from spring_core.placement import Placement, Span, place_block

_LABEL_RE = re.compile(r"(?im)^[^\n]*\b(?:context|documents?|passages?|sources?)\b[^\n]*:[ \t]*$")


def find_placement(texts: Sequence[str], roles: Sequence[str], retrievals: Sequence[Retrieval]) -> Placement | None:
    """The block's position in ``texts`` (one per message; ``roles`` ``system``/``user``/``assistant``)."""
    last_user = max((i for i, role in enumerate(roles) if role == "user"), default=None)
    if retrievals:
        context = [span for r in retrievals for text in r.texts for span in _occurrences(texts, text)]
        questions = [span for r in retrievals for span in _occurrences(texts, r.query)]
        return place_block(texts, context, questions, question_turn=last_user)
    if last_user is None or last_user == 0:
        return None
    for index in range(last_user):
        label = _LABEL_RE.search(texts[index]) if roles[index] == "system" else None
        if label is not None and texts[index][label.end():].strip():
            return place_block(texts, [Span(index, label.end(), len(texts[index]))], [], question_turn=last_user)
    return None


def _occurrences(texts: Sequence[str], needle: str) -> list[Span]:
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
