"""Every bad input of issue #17, table-driven: exit code 2, one ``error:`` line naming the file (and line where
there is one), no traceback, and nothing on disk changed.

Each case builds its files in a fresh folder and returns the command line; the command runs in process through
``spring_cli.main`` (the code a real ``spring-rag`` process runs), and a few cases run as real subprocesses.
"""

from __future__ import annotations

import fcntl
import json
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spring_cli import main
from spring_core import VirtualTokens
from spring_core.artifacts.manifest import sha256_file
from spring_core.model.loading import load_model

GOOD_QA = {"id": "q1", "question": "What is the capital of France?", "answers": ["Paris"],
           "passages": [{"title": "France", "text": "The capital of France is Paris."}]}
GOOD_PASSAGE = {"id": "p1", "title": "France", "text": "The capital of France is Paris."}


@dataclass(frozen=True)
class Case:
    """One bad input: ``build(folder, tiny_dir)`` writes the files and returns the argv; the error must contain
    every string of ``names`` (file and line)."""

    name: str
    build: Callable[[Path, Path], list[str]]
    names: tuple[str, ...]


# ----- bad JSONL, given to each command that reads JSONL ------------------------------------------------------

BAD_LINES: dict[str, bytes] = {
    "utf-16": (json.dumps(GOOD_QA) + "\n").encode("utf-16"),
    "utf-16-no-bom": (json.dumps(GOOD_QA) + "\n").encode("utf-16-le"),
    "invalid-utf-8": json.dumps(GOOD_QA).encode() + b'\n{"id": "q2", "question": "\xff\xfe?"}\n',
    "brackets-200k": json.dumps(GOOD_QA).encode() + b"\n" + b"[" * 200_000 + b"\n",
    "5000-digit-number": json.dumps(GOOD_QA).encode() + b'\n{"id": ' + b"9" * 5000 + b"}\n",
    "list-id": json.dumps(GOOD_QA).encode() + b"\n" + json.dumps({**GOOD_QA, "id": ["q", 2]}).encode() + b"\n",
    "dict-id": json.dumps(GOOD_QA).encode() + b"\n" + json.dumps({**GOOD_QA, "id": {"q": 2}}).encode() + b"\n",
    "10-mb-passage": json.dumps(GOOD_QA).encode() + b"\n"
    + json.dumps({**GOOD_QA, "id": "q2", "passages": ["word " * 2_000_000]}).encode() + b"\n",
}
BAD_LINE_NUMBER = {"utf-16": 1, "utf-16-no-bom": 1}


def _jsonl_case(command: str, kind: str) -> Case:
    def build(folder: Path, tiny_dir: Path) -> list[str]:
        data = BAD_LINES[kind]
        if command == "index":  # the corpus schema: the same bytes with corpus rows
            data = data.replace(json.dumps(GOOD_QA).encode(), json.dumps(GOOD_PASSAGE).encode())
        path = folder / "bad.jsonl"
        path.write_bytes(data)
        if command == "index":
            return ["index", str(path), "--store", str(folder / "store"), "--backend", "bm25"]
        if command == "train":
            return ["train", "--model", str(tiny_dir), "--data", str(path), "--out", str(folder / "out"), "--quiet"]
        return ["eval", "--model", str(tiny_dir), "--data", str(path), "--out", str(folder / "out"),
                "--methods", "concat"]

    line = BAD_LINE_NUMBER.get(kind, 2)
    return Case(f"{command}-{kind}", build, (f"bad.jsonl:{line}",))


JSONL_CASES = [_jsonl_case(command, kind) for command in ("index", "train", "eval") for kind in BAD_LINES]


# ----- command-line arguments ---------------------------------------------------------------------------------

def _qa_file(folder: Path) -> Path:
    path = folder / "qa.jsonl"
    path.write_text(json.dumps(GOOD_QA) + "\n", encoding="utf-8")
    return path


def _weight(weight: str) -> Callable[[Path, Path], list[str]]:
    def build(folder: Path, tiny_dir: Path) -> list[str]:
        return ["train", "--model", str(tiny_dir), "--data", f"{_qa_file(folder)}:{weight}", "--out",
                str(folder / "out"), "--quiet"]
    return build


ARGUMENT_CASES = [Case(f"train-weight-{w}", _weight(w), ("qa.jsonl",)) for w in ("inf", "1e400", "nan", "-2")]


# ----- damaged artifacts (spring-rag info and the demo validate on load) ---------------------------------------

def _artifact(folder: Path, tiny_dir: Path) -> Path:
    model, tokenizer = load_model(str(tiny_dir))
    VirtualTokens.random(model, n=4, tokenizer=tokenizer).save(folder / "art")
    return folder / "art"


def _edit_manifest(edit: Callable[[dict], None]) -> Callable[[Path, Path], list[str]]:
    def build(folder: Path, tiny_dir: Path) -> list[str]:
        art = _artifact(folder, tiny_dir)
        manifest = json.loads((art / "spring.json").read_text())
        edit(manifest)
        (art / "spring.json").write_text(json.dumps(manifest))
        return ["info", str(art)]
    return build


def _edit_table(table: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path, Path], list[str]]:
    """A new table with a matching hash, as a buggy exporter or a hand edit would leave it."""
    def build(folder: Path, tiny_dir: Path) -> list[str]:
        art = _artifact(folder, tiny_dir)
        old = VirtualTokens.load(art).weight.detach()
        save_file({"tokens": table(old)}, art / "tokens.safetensors")
        manifest = json.loads((art / "spring.json").read_text())
        manifest["files"]["tokens.safetensors"]["sha256"] = sha256_file(art / "tokens.safetensors")
        (art / "spring.json").write_text(json.dumps(manifest))
        return ["info", str(art)]
    return build


def _demo(info_argv: list[str], tiny_dir: Path) -> list[str]:
    """The same damaged artifact given to the demo, which used to load it and crash while generating."""
    return ["demo", "--model", str(tiny_dir), "--tokens", info_argv[1], "--count", "1", "--max-new-tokens", "2"]


def _huge_number_manifest(folder: Path, tiny_dir: Path) -> list[str]:
    art = _artifact(folder, tiny_dir)
    text = (art / "spring.json").read_text()
    (art / "spring.json").write_text(text.replace('"n": 4', '"n": ' + "9" * 5000))
    return ["info", str(art)]


def _smollm2_fingerprint(manifest: dict) -> None:
    manifest["base_model"].update(name="SmolLM2-135M-Instruct", vocab_size=49152,
                                  fingerprint={"shape": [49152, 576], "sample_sha256": "f09f3eb9a5ca8b87"})


ARTIFACT_CASES = [
    Case("artifact-marker-template-edited", _edit_manifest(lambda m: m.update(marker_template="<v{i}>")),
         ("spring.json", "marker_template")),
    Case("artifact-prompt-layout-deleted", _edit_manifest(lambda m: m.pop("prompt_layout")),
         ("spring.json", "prompt_layout")),
    Case("artifact-prompt-layout-bogus", _edit_manifest(lambda m: m.update(prompt_layout="bogus")),
         ("spring.json", "prompt_layout")),
    Case("artifact-n-a-string", _edit_manifest(lambda m: m.update(n="4")), ("spring.json", "field n")),
    Case("artifact-hidden-size-negative", _edit_manifest(lambda m: m["base_model"].update(hidden_size=-64)),
         ("spring.json", "hidden_size")),
    Case("artifact-files-entry-a-string",
         _edit_manifest(lambda m: m["files"].update({"tokens.safetensors": "deadbeef"})), ("spring.json", "files")),
    Case("artifact-files-outside-the-folder",
         _edit_manifest(lambda m: m["files"].update({"../secret": {"sha256": "0" * 64, "bytes": 1}})),
         ("spring.json", "files")),
    Case("artifact-64-wide-with-smollm2-fingerprint", _edit_manifest(_smollm2_fingerprint),
         ("spring.json", "[49152, 576]")),
    Case("artifact-values-1e30", _edit_table(lambda t: torch.full_like(t, 1e30)), ("tokens.safetensors", "1e+30")),
    Case("artifact-int64-table", _edit_table(lambda t: t.round().to(torch.int64)), ("tokens.safetensors", "int64")),
    Case("demo-with-prompt-layout-bogus", lambda folder, tiny_dir: _demo(
        _edit_manifest(lambda m: m.update(prompt_layout="bogus"))(folder, tiny_dir), tiny_dir), ("prompt_layout",)),
    Case("artifact-manifest-5000-digits", lambda folder, tiny_dir: _huge_number_manifest(folder, tiny_dir),
         ("spring.json",)),
]


# ----- outputs that already exist, stores, checkpoints ----------------------------------------------------------

def _import_over_artifact(folder: Path, tiny_dir: Path) -> list[str]:
    art = _artifact(folder, tiny_dir)
    (art / "train_log.jsonl").write_text('{"step": 1}\n')
    torch.save(torch.zeros(4, 64), folder / "tokens.pt")
    return ["import-spring", str(folder / "tokens.pt"), "--model", str(tiny_dir), "--out", str(art)]


def _index_into_other_kind(folder: Path, tiny_dir: Path) -> list[str]:
    corpus = folder / "corpus.jsonl"
    corpus.write_text(json.dumps(GOOD_PASSAGE) + "\n")
    assert main(["index", str(corpus), "--store", str(folder / "store"), "--backend", "bm25"]) == 0
    return ["index", str(corpus), "--store", str(folder / "store"), "--backend", "dense"]


def _index_into_artifact(folder: Path, tiny_dir: Path) -> list[str]:
    art = _artifact(folder, tiny_dir)
    corpus = folder / "corpus.jsonl"
    corpus.write_text(json.dumps(GOOD_PASSAGE) + "\n")
    return ["index", str(corpus), "--store", str(art), "--backend", "bm25"]


def _augment_over(target: str) -> Callable[[Path, Path], list[str]]:
    def build(folder: Path, tiny_dir: Path) -> list[str]:
        corpus = folder / "corpus.jsonl"
        corpus.write_text(json.dumps(GOOD_PASSAGE))  # no final newline: a resuming augment would cut this line
        out = corpus if target == "corpus" else _qa_file(folder)
        return ["augment", str(corpus), "--out", str(out), "--augmenter", "cloze", "--quiet"]
    return build


def _parametrize_over_folder(folder: Path, tiny_dir: Path) -> list[str]:
    art = _artifact(folder, tiny_dir)
    (art / "spring.json").rename(art / "notes.json")  # a non-empty folder that is no adapter store
    augmented = folder / "aug.jsonl"
    augmented.write_text(json.dumps({"id": "p1", "status": "ok", "rewrite": None, "qa": [{"question": "q",
                                                                                          "answer": "a"}]}) + "\n")
    return ["parametrize", str(augmented), "--model", str(tiny_dir), "--out", str(art), "--quiet"]


class _Touch:
    """A pickle that creates ``path`` when it is loaded: proof that a checkpoint ran code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _planted_pickle(folder: Path, tiny_dir: Path) -> list[str]:
    step = folder / "out" / "checkpoints" / "step-0000004"
    step.mkdir(parents=True)
    (step / "trainer_state.pt").write_bytes(pickle.dumps(_Touch(folder / "PWNED")))
    return ["train", "--model", str(tiny_dir), "--data", str(_qa_file(folder)), "--out", str(folder / "out"),
            "--resume", "--quiet"]


def _train_into_a_store(folder: Path, tiny_dir: Path) -> list[str]:
    corpus = folder / "corpus.jsonl"
    corpus.write_text(json.dumps(GOOD_PASSAGE) + "\n")
    assert main(["index", str(corpus), "--store", str(folder / "store"), "--backend", "bm25"]) == 0
    return ["train", "--model", str(tiny_dir), "--data", str(_qa_file(folder)), "--out", str(folder / "store"),
            "--quiet"]


OUTPUT_CASES = [
    Case("train-out-is-a-store", _train_into_a_store, ("store", "passages.jsonl")),
    Case("import-spring-over-an-artifact", _import_over_artifact, ("art",)),
    Case("index-into-a-store-of-another-kind", _index_into_other_kind, ("store", "bm25")),
    Case("index-into-an-artifact-folder", _index_into_artifact, ("art", "store.json")),
    Case("augment-out-is-the-corpus", _augment_over("corpus"), ("corpus.jsonl",)),
    Case("augment-out-is-a-qa-file", _augment_over("qa"), ("qa.jsonl",)),
    Case("parametrize-over-a-non-store-folder", _parametrize_over_folder, ("art",)),
    Case("train-resume-from-a-planted-pickle", _planted_pickle, ("trainer_state.pt", "pickle")),
]

CASES = JSONL_CASES + ARGUMENT_CASES + ARTIFACT_CASES + OUTPUT_CASES


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def assert_one_line_error(stderr: str, names: tuple[str, ...]) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert len(errors) == 1, stderr[-2000:]
    for name in names:
        assert name in errors[0], errors[0]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(case, tiny_dir, tmp_path, capsys):
    argv = case.build(tmp_path, tiny_dir)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, case.names)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "PWNED").exists()


def test_a_locked_store_refuses_a_second_writer(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps(GOOD_PASSAGE) + "\n")
    assert main(["index", str(corpus), "--store", str(tmp_path / "store"), "--backend", "bm25"]) == 0
    corpus.write_text(json.dumps({**GOOD_PASSAGE, "id": "p2"}) + "\n")
    before = snapshot(tmp_path)
    with open(tmp_path / "store" / ".lock", "a") as handle:  # another writer at work
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        capsys.readouterr()
        assert main(["index", str(corpus), "--store", str(tmp_path / "store"), "--backend", "bm25"]) == 2
    assert_one_line_error(capsys.readouterr().err, ("store", "being written by another process"))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["index-utf-16", "train-brackets-200k", "artifact-int64-table"])
def test_as_real_processes(name, tiny_dir, tmp_path):
    case = next(case for case in CASES if case.name == name)
    argv = case.build(tmp_path, tiny_dir)
    before = snapshot(tmp_path)
    result = subprocess.run([sys.executable, "-m", "spring_cli", *argv], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, case.names)
    assert snapshot(tmp_path) == before
