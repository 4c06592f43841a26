"""QA JSONL reading: every malformed line is reported with file and line, nothing is skipped silently."""

from __future__ import annotations

import json

import pytest

from spring_core.data import demo_qa_path, read_corpus, read_qa
from spring_core.errors import DataError

GOOD = {"id": "q1", "question": "Who?", "answers": ["Me"], "passages": [{"title": "t", "text": "Me."}]}


def write(tmp_path, lines):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bundled_demo_data_is_valid():
    rows = read_qa(demo_qa_path())
    assert len(rows) == 12 and all(row["passages"] for row in rows)


def test_blank_lines_are_fine(tmp_path):
    assert read_qa(write(tmp_path, [json.dumps(GOOD), "", "  "])) == [GOOD]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "q2", "question": ', r"qa.jsonl:2: not valid JSON \(Expecting value at column 26\)"),
        ("[1, 2]", r"qa.jsonl:2: each line must be a JSON object"),
        (json.dumps({**GOOD, "id": "q2", "question": " "}), r"qa.jsonl:2: field 'question'"),
        (json.dumps({**GOOD, "id": "q2", "answers": []}), r"qa.jsonl:2: field 'answers'"),
        (json.dumps({**GOOD, "id": "q2", "passages": [{"title": "x"}]}), r"qa.jsonl:2: passages\[0\]"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "id"}), r"qa.jsonl:2: missing field 'id'"),
        (json.dumps(GOOD), r"qa.jsonl:2: id 'q1' already used on line 1"),
        (json.dumps({**GOOD, "id": "7"}), r"qa.jsonl:2: id '7' already used on line 1"),  # after id 7 (below)
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, line, message):
    first = {**GOOD, "id": 7} if '"id": "7"' in line else GOOD  # 7 and "7" are one id: results key by the string
    with pytest.raises(DataError, match=message):
        read_qa(write(tmp_path, [json.dumps(first), line]))


def test_empty_or_missing_file(tmp_path):
    with pytest.raises(DataError, match="holds no rows"):
        read_qa(write(tmp_path, [""]))
    with pytest.raises(DataError, match="does not exist"):
        read_qa(tmp_path / "absent.jsonl")


BAD_BYTES = {
    "utf-16 with a byte-order mark": (json.dumps(GOOD).encode("utf-16"), r"qa.jsonl:1: the file is UTF-16"),
    "utf-16 without a mark": (json.dumps(GOOD).encode("utf-16-le"), r"qa.jsonl:1: the file holds NUL bytes"),
    "utf-32": (json.dumps(GOOD).encode("utf-32"), r"qa.jsonl:1: the file is UTF-32"),
    "invalid utf-8": (json.dumps(GOOD).encode() + b'\n{"id": "\xff"}\n', r"qa.jsonl:2: not valid UTF-8"),
    "deep nesting": (b"[" * 200_000 + b"\n", r"qa.jsonl:1: .*nested deeper than 32"),
    "deep but closed": (b'{"id": "q", "x": ' + b"[" * 40 + b"]" * 40 + b"}\n", r"qa.jsonl:1: .*nested deeper"),
    "5000-digit number": (b'{"id": ' + b"9" * 5000 + b"}\n", r"qa.jsonl:1: a number with 5,000 digits"),
    "overflowing float": (b'{"id": "q", "x": 1e999}\n', r"qa.jsonl:1: the number 1e999 is out of range"),
    "NaN literal": (b'{"id": "q", "x": NaN}\n', r"qa.jsonl:1: NaN is not a JSON number"),
    "list id": (json.dumps({**GOOD, "id": [1]}).encode(), r"qa.jsonl:1: field 'id' must be a non-empty string"),
    "dict id": (json.dumps({**GOOD, "id": {"a": 1}}).encode(), r"qa.jsonl:1: field 'id' must be"),
    "title not a string": (json.dumps({**GOOD, "passages": [{"title": 3, "text": "x"}]}).encode(),
                           r"qa.jsonl:1: passages\[0\].title must be a string"),
    "10 MB passage": (json.dumps({**GOOD, "passages": ["x" * 10_000_000]}).encode(),
                      r"qa.jsonl:1: the line is longer than 1,000,000 bytes"),
}


@pytest.mark.parametrize("name", sorted(BAD_BYTES))
def test_unreadable_bytes_raise_data_error_at_file_and_line(tmp_path, name):
    data, message = BAD_BYTES[name]
    path = tmp_path / "qa.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message):
        read_qa(path)


def test_a_utf8_byte_order_mark_is_accepted_and_the_same_reader_serves_the_corpus(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert read_qa(path) == [GOOD]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'{"id": "p1", "text": "x"}\n{"id": "p2", "text": "\xc3"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:2: not valid UTF-8"):
        read_corpus(corpus)
