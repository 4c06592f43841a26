"""QA JSONL reading: every malformed line is reported with file and line, nothing is skipped silently."""

from __future__ import annotations

import json

import pytest

from spring_core.data import demo_qa_path, read_qa
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
        ('{"id": "q2", "question": ', r"qa.jsonl:2: not valid JSON"),
        ("[1, 2]", r"qa.jsonl:2: each line must be a JSON object"),
        (json.dumps({**GOOD, "id": "q2", "question": " "}), r"qa.jsonl:2: field 'question'"),
        (json.dumps({**GOOD, "id": "q2", "answers": []}), r"qa.jsonl:2: field 'answers'"),
        (json.dumps({**GOOD, "id": "q2", "passages": [{"title": "x"}]}), r"qa.jsonl:2: passages\[0\]"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "id"}), r"qa.jsonl:2: missing field 'id'"),
        (json.dumps(GOOD), r"qa.jsonl:2: id 'q1' already used on line 1"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, line, message):
    with pytest.raises(DataError, match=message):
        read_qa(write(tmp_path, [json.dumps(GOOD), line]))


def test_empty_or_missing_file(tmp_path):
    with pytest.raises(DataError, match="holds no rows"):
        read_qa(write(tmp_path, [""]))
    with pytest.raises(DataError, match="does not exist"):
        read_qa(tmp_path / "absent.jsonl")
