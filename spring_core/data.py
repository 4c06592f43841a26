"""QA and corpus JSON Lines: reading with validation that names the file and line of every problem.

QA rows: ``{"id", "question", "answers": [str, ...], "passages": [{"title", "text"}, ...]}`` (passages optional).
Corpus rows: ``{"id", "title", "text"}`` (``title`` optional; other scalar fields are kept as metadata).
Blank lines are allowed; anything else malformed is an error: no row is ever skipped silently.

Example:
    >>> rows = read_qa("spring_core/resources/demo_qa.jsonl")   # doctest: +SKIP
    >>> rows[0]["question"]                                     # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from spring_core.errors import DataError


def demo_qa_path() -> Path:
    """The 12 SQuAD dev rows bundled with the package (see ``resources/SOURCE.md``)."""
    return Path(str(resources.files("spring_core") / "resources" / "demo_qa.jsonl"))


def sample_corpus_path() -> Path:
    """The 222 SQuAD dev paragraphs bundled with the package (the gold passages of ``demo_qa_path()`` included)."""
    return Path(str(resources.files("spring_core") / "resources" / "sample_corpus.jsonl"))


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; malformed JSON raises ``DataError`` at file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: each line must be a JSON object, got {type(row).__name__}")
            yield number, row


def _require_text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def validate_qa_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """Check one QA row; ``where`` (``file:line``) starts every message."""
    _require_text(row, "question", where)
    if "id" not in row:
        raise DataError(f"{where}: missing field 'id'")
    answers = row.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: field 'answers' must be a non-empty list of strings, got {answers!r}")
    passages = row.get("passages", [])
    if not isinstance(passages, list):
        raise DataError(f"{where}: field 'passages' must be a list, got {type(passages).__name__}")
    for index, passage in enumerate(passages):
        if isinstance(passage, str):
            continue
        if not isinstance(passage, dict) or not isinstance(passage.get("text"), str):
            raise DataError(f"{where}: passages[{index}] must be a string or an object with a string 'text'")
    return row


def _read_rows(path: str | Path, validate: Callable[[dict[str, Any], str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate every row (``validate(row, "file:line")`` returns the row to keep); ids must be unique."""
    rows: list[dict[str, Any]] = []
    first_seen: dict[Any, int] = {}
    for number, row in iter_jsonl(path):
        where = f"{path}:{number}"
        row = validate(row, where)
        if row["id"] in first_seen:
            earlier = first_seen[row["id"]]
            raise DataError(f"{where}: id {row['id']!r} already used on line {earlier}; ids must be unique")
        first_seen[row["id"]] = number
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


def read_qa(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a QA JSONL file; duplicate ids are an error."""
    return _read_rows(path, validate_qa_row)


def validate_corpus_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """Check one corpus row; returns it with its id as a string."""
    passage_id = row.get("id")
    if not isinstance(passage_id, (str, int)) or isinstance(passage_id, bool) or str(passage_id) == "":
        raise DataError(f"{where}: field 'id' must be a non-empty string or integer, got {passage_id!r}")
    _require_text(row, "text", where)
    if row.get("title") is not None and not isinstance(row["title"], str):
        raise DataError(f"{where}: field 'title' must be a string, got {type(row['title']).__name__}")
    return {**row, "id": str(passage_id)}


def read_corpus(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a corpus JSONL file: a unique string ``id`` and a non-empty ``text`` on every line."""
    return _read_rows(path, validate_corpus_row)
