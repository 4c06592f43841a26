"""PRAG document augmentation: the LLM writes a rewrite and question-answer pairs for every corpus document.

Each document gets one output line in the augmented JSONL::

    {"id", "title", "text", "status": "ok" | "failed", "rewrite", "qa": [{"question", "answer"}, ...],
     "attempts", "error", "prompt_version", "augmenter"}

The QA answer must be a JSON list; output that does not parse, or holds fewer than ``min_pairs`` usable pairs, is
retried up to ``max_attempts`` times (the first attempt greedy, retries sampled with a seed derived from ``seed``,
the document id and the attempt), then the document is written as ``failed`` with the reason: counted and
reported, never dropped. Lines are appended as documents finish, so an interrupted run resumes: ids already in
the output are skipped (``retry_failed=True`` tries the failed ones again; the newest line of an id wins).

Several processes may augment into one output file (``spring-rag augment`` under ``accelerate launch``, each with
its share of the corpus, ``spring_train.sharding``): every chunk is appended with one write while an exclusive
``flock`` on the file is held, and the repair of a half-written last line (a writer killed mid-write) happens under
the same lock, so no process ever cuts or interleaves another's line, and a killed process loses only the chunk it
was writing.

Example:
    >>> from spring_core.data import read_corpus
    >>> corpus = read_corpus("corpus.jsonl")[:3]
    >>> report = augment_corpus(sm, corpus[:2], "aug.jsonl", seed=0, max_attempts=2, max_new_tokens=16,
    ...                         show_progress=False)      # a random tiny model writes no JSON list: both fail
    >>> report.ok, report.failed, sorted(read_augmented("aug.jsonl")) == sorted(row["id"] for row in corpus[:2])
    (0, 2, True)
    >>> report = augment_corpus(None, corpus, "cloze.jsonl", augmenter="cloze", show_progress=False)
    >>> report.ok, report.failed, report.skipped            # no model: fill-in-the-blank pairs
    (2, 1, 0)
    >>> report.failures                                      # counted with the reason, never dropped
    {'squad-Private_school-0': 'only 0 number(s) or name(s) to blank out (need 1)'}
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spring_core.data import iter_jsonl
from spring_core.errors import DataError, SpringError
from spring_core.model.spring_model import SpringModel
from spring_core.prompts.layouts import has_chat_template, render_chat
from spring_core.types import PromptParts
from spring_train.augment_prompts import EXAMPLE_QUESTION, PROMPT_VERSION, qa_prompt, rewrite_prompt

_OBJECT = re.compile(r"\{[^{}]*\}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NUMBER = re.compile(r"\b\d[\d,.]*\d\b|\b\d\b")
_NAME = re.compile(r"\b[A-Z][\w'-]+(?:\s+(?:of\s+|the\s+|de\s+)?[A-Z][\w'-]+)*")
AUGMENTERS = ("llm", "cloze")
CLOZE_VERSION = "cloze-v1"


@dataclass
class AugmentReport:
    """What one ``augment_corpus`` call did."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def seconds_per_document(self) -> float:
        done = self.ok + self.failed
        return self.seconds / done if done else 0.0


def parse_qa(text: str, *, count: int = 3, min_pairs: int = 1) -> list[dict[str, str]]:
    """The first ``count`` distinct ``{"question", "answer"}`` pairs in the model's JSON answer.

    Reads the outermost ``[...]`` list, else any flat ``{...}`` objects in the text (small models often break the
    list but keep the objects); the prompt's own example question is skipped. Raises ``ValueError`` saying what was
    wrong when fewer than ``min_pairs`` remain.

    Example:
        >>> parse_qa('Sure! [{"question": "Who?", "answer": "Ada"}]')
        [{'question': 'Who?', 'answer': 'Ada'}]
    """
    items: list[Any] = []
    start, end = text.find("["), text.rfind("]")
    if 0 <= start < end:
        try:
            parsed = json.loads(text[start:end + 1])
            items = parsed if isinstance(parsed, list) else []
        except json.JSONDecodeError:
            items = []
    if not items:
        for match in _OBJECT.finditer(text):
            try:
                items.append(json.loads(match.group(0)))
            except json.JSONDecodeError:
                continue
    pairs: list[dict[str, str]] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            continue
        question, answer = item.get("question"), item.get("answer")
        if not isinstance(question, str) or not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            continue
        question, answer = question.strip(), str(answer).strip()
        if question.lower() == EXAMPLE_QUESTION.lower():
            continue  # the prompt's own example, copied
        if question and answer and question.lower() not in seen:
            seen.add(question.lower())
            pairs.append({"question": question, "answer": answer})
    if len(pairs) < min_pairs:
        found = "no JSON list or object" if not items else f"{len(pairs)} usable question/answer pair(s)"
        raise ValueError(f"{found} in the model's answer (need {min_pairs})")
    return pairs[:count]


def read_augmented(path: str | Path) -> dict[str, dict[str, Any]]:
    """The newest line per document id of an augmented JSONL. A half-written last line (a writer killed mid-write)
    is dropped from the file, under the lock writers hold (``append_lines``), so a line another process is writing
    at that moment is never cut."""
    path = Path(path)
    if not path.exists():
        return {}
    with _locked(path) as handle:  # other processes may be appending: read (and repair) between their writes
        _drop_half_line(handle, path)  # a run killed mid-write: that document is augmented again
        numbered = list(iter_jsonl(path))
    rows: dict[str, dict[str, Any]] = {}
    for number, row in numbered:
        if not isinstance(row.get("id"), str) or row.get("status") not in ("ok", "failed"):
            raise DataError(f"{path}:{number}: not an augmented document (needs a string 'id' and 'status' ok/failed)")
        if row["status"] == "ok" and (not isinstance(row.get("rewrite"), (str, type(None)))
                                      or not isinstance(row.get("qa"), list) or not row["qa"]):
            raise DataError(f"{path}:{number}: an 'ok' document needs 'qa' (a non-empty list) and 'rewrite' (text or "
                            "null)")
        rows[row["id"]] = row
    return rows


def append_lines(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append ``rows`` to the JSONL ``path`` as one write under an exclusive ``flock`` on the file, after dropping a
    half-written last line that a killed writer left (so the new lines never join it).

    Safe with any number of processes appending to (and ``read_augmented`` reading) the same file at once.
    """
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    with _locked(path, create=True) as handle:
        _drop_half_line(handle, Path(path))
        written = os.write(handle, data)
        while written < len(data):  # a regular file takes it whole; this only finishes an interrupted write
            written += os.write(handle, data[written:])


@contextmanager
def _locked(path: str | Path, *, create: bool = False) -> Iterator[int]:
    """A read-write descriptor of ``path`` (appending) while this process holds an exclusive lock on the file."""
    try:
        handle = os.open(path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0), 0o644)
    except PermissionError:
        if create:
            raise
        handle = os.open(path, os.O_RDONLY)  # a read-only file can still be read (and locked: flock needs no write)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process writes
        yield handle
    finally:
        os.close(handle)  # closing the descriptor releases the lock


def _drop_half_line(handle: int, path: Path, block: int = 1 << 16) -> None:
    """Cut the file back to its last newline. Under the lock, a last line without one can only be what a writer
    killed mid-write left behind (a live writer finishes its whole write before it lets go of the lock)."""
    end = os.fstat(handle).st_size
    if end == 0 or os.pread(handle, 1, end - 1) == b"\n":
        return
    keep, cut = 0, end - 1
    while cut > 0:  # the last newline, read backwards a block at a time (lines can be long)
        start = max(0, cut - block)
        found = os.pread(handle, cut - start, start).rfind(b"\n")
        if found >= 0:
            keep = start + found + 1
            break
        cut = start
    try:
        os.ftruncate(handle, keep)
    except OSError as exc:
        raise DataError(f"{path}: the last line was left half-written by an interrupted run and the file cannot be "
                        f"changed ({exc.strerror}); make it writable, or delete that line") from exc


def cloze_pairs(doc_id: str, text: str, *, count: int = 3, seed: int = 0) -> list[dict[str, str]]:
    """Fill-in-the-blank pairs without an LLM: a sentence with one number or name blanked out, and that span.

    The sentences and spans are drawn with a seed of ``(seed, doc_id)``, preferring different sentences.

    Example:
        >>> pair = cloze_pairs("d", "The Act was passed in 1996 by Congress.", count=1)[0]
        >>> pair["answer"] in ("1996", "Congress") and "____" in pair["question"]
        True
    """
    candidates: list[tuple[int, str, re.Match[str]]] = []
    for index, sentence in enumerate(_SENTENCE_END.split(text.strip())):
        spans = list(_NUMBER.finditer(sentence)) + [m for m in _NAME.finditer(sentence) if m.start() > 0]
        candidates.extend((index, sentence, match) for match in spans)
    rng = random.Random(f"{seed}:{doc_id}")
    rng.shuffle(candidates)
    chosen, used = [], set()
    for index, sentence, match in candidates:
        if index in used:
            continue
        used.add(index)
        blanked = f"{sentence[:match.start()]}____{sentence[match.end():]}".strip()
        chosen.append({"question": f"Fill in the blank: {blanked}", "answer": match.group(0)})
        if len(chosen) == count:
            break
    return chosen


def augment_corpus(sm: SpringModel | None, corpus: Sequence[dict[str, Any]], out: str | Path, *, seed: int = 0,
                   pairs: int = 3, min_pairs: int = 1, max_attempts: int = 3, batch_size: int = 8,
                   max_new_tokens: int = 256, retry_failed: bool = False, augmenter: str = "llm",
                   show_progress: bool = True) -> AugmentReport:
    """Augment every document of ``corpus`` not yet in ``out`` (see the module docstring); returns the counts.

    ``augmenter="cloze"`` needs no model (``sm`` may be ``None``): fill-in-the-blank pairs from each document's own
    numbers and names (``cloze_pairs``) and no rewrite, for models too small to follow the QA instruction.
    """
    if augmenter not in AUGMENTERS:
        raise SpringError(f"unknown augmenter {augmenter!r}; choose one of {', '.join(AUGMENTERS)}")
    if augmenter == "llm" and sm is None:
        raise SpringError("the 'llm' augmenter needs a model")
    if max_attempts < 1 or pairs < 1 or not 1 <= min_pairs <= pairs:
        raise SpringError(f"need max_attempts >= 1 and 1 <= min_pairs <= pairs, got {max_attempts}, {min_pairs}, "
                          f"{pairs}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_augmented(out)
    report = AugmentReport()
    todo = []
    for row in corpus:
        previous = done.get(row["id"])
        if previous is not None and not (retry_failed and previous["status"] == "failed"):
            report.skipped += 1
        else:
            todo.append(row)
    began = time.perf_counter()
    progress = _progress(len(todo), show_progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        settings = {"seed": seed, "pairs": pairs, "min_pairs": min_pairs, "max_attempts": max_attempts,
                    "max_new_tokens": max_new_tokens}
        if augmenter == "cloze":
            results = [_cloze_row(row, seed=seed, pairs=pairs, min_pairs=min_pairs) for row in chunk]
        else:
            results = _augment_chunk(sm, chunk, **settings)
        append_lines(out, results)  # one locked write per chunk: other processes may share `out`
        for result in results:
            if result["status"] == "ok":
                report.ok += 1
            else:
                report.failed += 1
                report.failures[result["id"]] = result["error"]
        progress.update(len(chunk))
        progress.set_postfix(ok=report.ok, failed=report.failed)
    progress.close()
    report.seconds = time.perf_counter() - began
    return report


def _augment_chunk(sm: SpringModel, rows: Sequence[dict[str, Any]], *, seed: int, pairs: int, min_pairs: int,
                   max_attempts: int, max_new_tokens: int) -> list[dict[str, Any]]:
    passages = [_passage_text(row) for row in rows]
    greedy = {"max_new_tokens": max_new_tokens}
    rewrites = sm.generate_batch([_user_turn(sm, rewrite_prompt(p)) for p in passages], batch_size=len(rows),
                                 **greedy)
    first_qa = sm.generate_batch([_user_turn(sm, qa_prompt(p, pairs)) for p in passages], batch_size=len(rows),
                                 **greedy)
    results = []
    for row, passage, rewrite, answer in zip(rows, passages, rewrites, first_qa, strict=True):
        result = {"id": row["id"], "title": row.get("title", ""), "text": row["text"], "status": "failed",
                  "rewrite": rewrite.text.strip() or None, "qa": [], "attempts": 0, "error": None,
                  "prompt_version": PROMPT_VERSION, "augmenter": sm.name}
        text = answer.text
        for attempt in range(1, max_attempts + 1):
            result["attempts"] = attempt
            if attempt > 1:  # retries sample, with a seed of their own
                text = sm.generate_from_prompt(_user_turn(sm, qa_prompt(passage, pairs)), temperature=0.8,
                                               seed=_seed(seed, row["id"], attempt), **greedy).text
            try:
                result["qa"] = parse_qa(text, count=pairs, min_pairs=min_pairs)
                break
            except ValueError as exc:
                result["error"] = str(exc)
        if result["qa"] and result["rewrite"]:
            result["status"], result["error"] = "ok", None
        elif not result["rewrite"]:
            result["error"] = "the model wrote an empty rewrite"
        results.append(result)
    return results


def _cloze_row(row: dict[str, Any], *, seed: int, pairs: int, min_pairs: int) -> dict[str, Any]:
    qa = cloze_pairs(row["id"], row["text"], count=pairs, seed=seed)
    ok = len(qa) >= min_pairs
    return {"id": row["id"], "title": row.get("title", ""), "text": row["text"], "status": "ok" if ok else "failed",
            "rewrite": None, "qa": qa, "attempts": 1,
            "error": None if ok else f"only {len(qa)} number(s) or name(s) to blank out (need {min_pairs})",
            "prompt_version": CLOZE_VERSION, "augmenter": "cloze"}


def _passage_text(row: dict[str, Any]) -> str:
    title = str(row.get("title") or "").strip()
    return f"{title}\n{row['text']}" if title else str(row["text"])


def _user_turn(sm: SpringModel, text: str) -> PromptParts | str:
    """``text`` as one user turn of the model's chat template (instruct models expect it), else as it is."""
    if has_chat_template(sm.tokenizer):
        return render_chat(sm.tokenizer, [{"role": "user", "content": text}])
    return text


def _seed(seed: int, doc_id: str, attempt: int) -> int:
    return zlib.crc32(f"{seed}:{doc_id}:{attempt}".encode())


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="augment", unit="doc", disable=not enabled)
