"""QA and corpus JSON Lines: reading with validation that names the file and line of every problem.

QA rows: ``{"id", "question", "answers": [str, ...], "passages": [{"title", "text"}, ...]}`` (passages optional).
Corpus rows: ``{"id", "title", "text"}`` (``title`` optional; other scalar fields are kept as metadata).
Blank lines are allowed; anything else malformed is an error: no row is ever skipped silently.

Example:
    >>> rows = read_qa(demo_qa_path())               # the 12 bundled SQuAD dev rows; any QA file path works
    >>> len(rows), rows[0]["answers"]
    (12, ['independent', 'independent schools'])
    >>> read_corpus(sample_corpus_path())[0]["title"]
    'Private school'
"""

from __future__ import annotations

import json
import math
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


MAX_LINE_BYTES = 1_000_000
"""Longest accepted line: no passage a model reads is this long (~250k tokens); longer lines are refused."""
MAX_DEPTH = 32
"""Deepest accepted nesting of arrays and objects in one row (QA rows need 3)."""
MAX_INT_DIGITS = 20
"""Longest accepted integer literal (int64 fits in 19 digits)."""

_UTF16_32_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
                  b"\xfe\xff": "UTF-16"}
_UTF8_BOM = b"\xef\xbb\xbf"


def iter_jsonl(path: str | Path, *, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a UTF-8 JSON Lines file.

    This is the one JSONL reader every command uses. Anything it cannot read raises ``DataError`` naming
    ``file:line``: another encoding (UTF-16/32, with or without a byte-order mark), invalid UTF-8, a line over
    ``max_line_bytes``, nesting deeper than ``MAX_DEPTH``, an integer over ``MAX_INT_DIGITS`` digits, a number
    that overflows to infinity, NaN/Infinity literals, invalid JSON, or a line that is not an object. A UTF-8
    byte-order mark is accepted and dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        with path.open("rb") as handle:
            _check_encoding(path, handle.read(4))
            handle.seek(0)
            number = 0
            while True:
                raw = handle.readline(max_line_bytes + 1)
                if not raw:
                    return
                number += 1
                if len(raw) > max_line_bytes:
                    raise DataError(f"{path}:{number}: the line is longer than {max_line_bytes:,} bytes; split long "
                                    "documents into passages of at most a few thousand words")
                if number == 1 and raw.startswith(_UTF8_BOM):
                    raw = raw[len(_UTF8_BOM):]
                row = _parse_line(raw, f"{path}:{number}")
                if row is not None:
                    yield number, row
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc})") from exc


def _check_encoding(path: Path, head: bytes) -> None:
    for bom, name in _UTF16_32_BOMS.items():
        if head.startswith(bom):
            raise DataError(f"{path}:1: the file is {name} (it starts with a byte-order mark); save it as UTF-8, "
                            f"e.g. iconv -f {name} -t UTF-8")
    if len(head) >= 2 and b"\x00" in head[:4]:
        raise DataError(f"{path}:1: the file holds NUL bytes, as UTF-16 or UTF-32 text does; save it as UTF-8")


def _parse_line(raw: bytes, where: str) -> dict[str, Any] | None:
    """One JSON object from one line, or None for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not valid UTF-8 (byte {exc.start + 1} of the line); save the file as UTF-8") from exc
    if not text.strip():
        return None
    try:
        row = json.loads(text.rstrip("\r\n"), parse_int=lambda digits: _parse_int(digits, where),
                         parse_float=lambda digits: _parse_float(digits, where),
                         parse_constant=lambda name: _refuse_constant(name, where))
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    except RecursionError as exc:
        raise DataError(f"{where}: arrays or objects nested deeper than {MAX_DEPTH} levels") from exc
    if not isinstance(row, dict):
        raise DataError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
    if _depth(row) > MAX_DEPTH:
        raise DataError(f"{where}: arrays or objects nested deeper than {MAX_DEPTH} levels")
    return row


def _parse_int(digits: str, where: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise DataError(f"{where}: a number with {len(digits.lstrip('-')):,} digits; the limit is {MAX_INT_DIGITS} "
                        "(write long identifiers as strings)")
    return int(digits)


def _parse_float(digits: str, where: str) -> float:
    value = float(digits) if len(digits) <= 400 else float("inf")
    if not math.isfinite(value):
        raise DataError(f"{where}: the number {digits[:20]}{'...' if len(digits) > 20 else ''} is out of range")
    return value


def _refuse_constant(name: str, where: str) -> float:
    raise DataError(f"{where}: {name} is not a JSON number; write a finite number or a string")


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: a deep value cannot exhaust the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _require_text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {key!r} must be a non-empty string, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    """``repr(value)`` cut to 60 characters, so an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_qa_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """Check one QA row; ``where`` (``file:line``) starts every message."""
    _require_text(row, "question", where)
    if "id" not in row:
        raise DataError(f"{where}: missing field 'id'")
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool) or str(row["id"]) == "":
        raise DataError(f"{where}: field 'id' must be a non-empty string or integer, got {_short(row['id'])}")
    answers = row.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: field 'answers' must be a non-empty list of strings, got {_short(answers)}")
    passages = row.get("passages", [])
    if not isinstance(passages, list):
        raise DataError(f"{where}: field 'passages' must be a list, got {type(passages).__name__}")
    for index, passage in enumerate(passages):
        if isinstance(passage, str):
            continue
        if not isinstance(passage, dict) or not isinstance(passage.get("text"), str):
            raise DataError(f"{where}: passages[{index}] must be a string or an object with a string 'text'")
        if passage.get("title") is not None and not isinstance(passage["title"], str):
            raise DataError(f"{where}: passages[{index}].title must be a string, got {type(passage['title']).__name__}")
    return row


def _read_rows(path: str | Path, validate: Callable[[dict[str, Any], str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate every row (``validate(row, "file:line")`` returns the row to keep); ids must be unique."""
    rows: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    for number, row in iter_jsonl(path):
        where = f"{path}:{number}"
        row = validate(row, where)
        key = str(row["id"])  # 1 and "1" are one id: results and predictions are keyed by the string
        if key in first_seen:
            raise DataError(f"{where}: id {row['id']!r} already used on line {first_seen[key]}; ids must be unique")
        first_seen[key] = number
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
        raise DataError(f"{where}: field 'id' must be a non-empty string or integer, got {_short(passage_id)}")
    _require_text(row, "text", where)
    if row.get("title") is not None and not isinstance(row["title"], str):
        raise DataError(f"{where}: field 'title' must be a string, got {type(row['title']).__name__}")
    return {**row, "id": str(passage_id)}


def read_corpus(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a corpus JSONL file: a unique string ``id`` and a non-empty ``text`` on every line."""
    return _read_rows(path, validate_corpus_row)
