"""Two tiny augmented documents (``spring-rag augment``'s output rows) for the parametric tests: enough to train
PRAG adapters, a Poly-PRAG mix and a DyPRAG translator on the tiny model in seconds."""

from __future__ import annotations

AUGMENTED = {
    "harvard": {"id": "harvard", "title": "Harvard", "status": "ok",
                "text": "Harvard University is named after John Harvard, a minister.",
                "rewrite": "John Harvard, a minister, gave Harvard University its name.",
                "qa": [{"question": "Who is Harvard named after?", "answer": "John Harvard"}]},
    "yale": {"id": "yale", "title": "Yale", "status": "ok", "text": "Yale University is in New Haven, Connecticut.",
             "rewrite": "New Haven, Connecticut is home to Yale University.",
             "qa": [{"question": "Where is Yale University?", "answer": "New Haven"}]},
}
"""Augmented rows by document id, both usable."""


def corpus_rows(rows: dict[str, dict]) -> list[dict[str, str]]:
    """The ``{"id", "title", "text"}`` corpus rows of the usable augmented rows."""
    return [{"id": key, "title": row["title"], "text": row["text"]} for key, row in rows.items()
            if row["status"] == "ok"]
