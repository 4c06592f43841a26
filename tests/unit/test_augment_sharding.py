"""Augmentation that shards over processes: writers appending to one augmented JSONL (while others read and repair
it) lose and cut nothing, and `spring-rag augment` under a real 2-process `accelerate launch` writes the rows one
process writes, resuming a run that was killed mid-write."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cpu_launch import run_spring_rag
from processes import exit_codes

from spring_core.errors import DataError
from spring_train.augment import append_lines, augment_corpus, read_augmented
from spring_train.sharding import share

CORPUS = [{"id": f"doc-{i}", "title": f"Title {i}", "text": f"Document {i} says the answer is {i * 7}."}
          for i in range(7)]


# documents, characters each; reads while they are written. Without the lock on the file, 10 of 10 runs of the
# test below lost or cut lines (a check for a half-written last line caught another writer's line being written).
LONG, READS = (120, 100_000), 40


def long_corpus(count: int, width: int) -> list[dict]:
    """Documents quick to augment whose lines span many pages: the writers spend most of their time writing, so an
    unlocked check for a half-written last line would often catch another's write half done."""
    return [{"id": f"long-{i}", "title": f"Long {i}", "text": f"{'Q' * width} was founded in {1900 + i}."}
            for i in range(count)]


def augment_share(out: str, corpus: list[dict], index: int) -> None:
    augment_corpus(None, share(corpus, index, 2), out, augmenter="cloze", batch_size=1, show_progress=False)


def keep_reading(out: str, rounds: int) -> None:
    for _ in range(rounds):  # each read repairs a half-written last line, were it to see one
        if os.path.exists(out):
            read_augmented(out)


def test_writers_and_readers_of_one_augmented_file_lose_and_cut_nothing(tmp_path):
    """Two processes augment their shares into one file, batch by batch, while a third reads it (``augment``'s
    resume read, which repairs a half-written last line)."""
    out = str(tmp_path / "aug.jsonl")
    corpus = long_corpus(*LONG)
    calls = [(augment_share, (out, corpus, i)) for i in (0, 1)] + [(keep_reading, (out, READS))]
    assert exit_codes(calls, timeout=120) == [0, 0, 0]
    data = Path(out).read_bytes()
    assert b"\0" not in data and data.endswith(b"\n")  # no hole where a cut line's writer went on writing
    lines = data.decode().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(row["id"] for row in corpus)  # each once
    rows = read_augmented(out)
    assert all(rows[row["id"]]["text"] == row["text"] and rows[row["id"]]["status"] == "ok" for row in corpus)


@pytest.mark.slow
def test_writers_and_readers_lose_nothing_20_times(tmp_path, request):
    selection = request.config.getoption("markexpr") or ""
    if "slow" not in selection.replace("not slow", ""):  # ~100 s: only when asked for, as in `pytest -m slow`
        pytest.skip("20 races take minutes; run them with -m slow")
    for attempt in range(20):
        test_writers_and_readers_of_one_augmented_file_lose_and_cut_nothing(tmp_path / str(attempt))


def test_a_writer_drops_a_half_line_left_by_a_killed_writer_before_appending(tmp_path):
    out = tmp_path / "aug.jsonl"
    first = {"id": "a", "status": "failed", "error": "x"}
    out.write_text(json.dumps(first) + "\n" + '{"id": "b", "status": "o')  # killed in the middle of b's line
    append_lines(out, [{"id": "c", "status": "failed", "error": "y"}])
    assert list(read_augmented(out)) == ["a", "c"]
    out.write_text('{"id": "only half of one line')
    append_lines(out, [first])
    assert out.read_text() == json.dumps(first) + "\n"


def test_a_read_only_file_is_read_and_a_half_line_in_it_is_named(tmp_path):
    out = tmp_path / "aug.jsonl"
    out.write_text(json.dumps({"id": "a", "status": "failed", "error": "x"}) + "\n")
    out.chmod(0o444)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as a user who may write read-only files")
        assert list(read_augmented(out)) == ["a"]
        out.chmod(0o644)
        out.write_text(out.read_text() + '{"id": "b"')
        out.chmod(0o444)
        with pytest.raises(DataError, match="half-written by an interrupted run"):
            read_augmented(out)
    finally:
        out.chmod(0o644)


def launch_augment(tmp_path: Path, corpus: Path, out: Path, processes: int) -> subprocess.CompletedProcess:
    return run_spring_rag(processes, tmp_path / "home", "augment", str(corpus), "--out", str(out),
                          "--augmenter", "cloze", "--batch-size", "1", "--quiet")


@pytest.mark.distributed
def test_two_launched_processes_augment_what_one_process_does_and_resume_a_killed_run(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in CORPUS))
    launch_augment(tmp_path, corpus, tmp_path / "one.jsonl", 1)
    one = read_augmented(tmp_path / "one.jsonl")
    assert len(one) == 7 and all(row["status"] == "ok" for row in one.values())

    # A killed run: doc-0 and doc-1 written, doc-2 cut in the middle of its line.
    lines = (tmp_path / "one.jsonl").read_text().splitlines()
    by_id = {json.loads(line)["id"]: line for line in lines}
    two = tmp_path / "two.jsonl"
    two.write_text(by_id["doc-0"] + "\n" + by_id["doc-1"] + "\n" + by_id["doc-2"][:40])
    done = launch_augment(tmp_path, corpus, two, 2)
    # process 0 has doc-0, 2, 4, 6 (doc-0 done, doc-2 redone); process 1 has doc-1, 3, 5 (doc-1 done)
    assert "3 augmented, 0 failed, 1 already done" in done.stdout, done.stdout
    assert "2 augmented, 0 failed, 1 already done" in done.stdout, done.stdout
    assert read_augmented(two) == one
    assert sorted(json.loads(line)["id"] for line in two.read_text().splitlines()) == sorted(one)  # each once
