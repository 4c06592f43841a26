"""The operating system refusing a write, injected for real: every command that writes exits with code 2 and one
``error:`` line naming the path, the cause and what to do, without a traceback, and what was on disk before is
still there byte for byte, with no temporary file left behind.

The faults are real file systems, not mocks: a small tmpfs filled to the last page (ENOSPC), a tmpfs remounted
read-only (EROFS), a folder with the immutable attribute (EPERM), and a folder without write permission written by a
process that lacks CAP_DAC_OVERRIDE (EACCES; root ignores permission bits otherwise). Mounting needs root (or
CAP_SYS_ADMIN); where it is refused, those tests are skipped with the reason.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spring_cli import main
from spring_train.config import TrainConfig
from spring_train.trainer import TrainingInterrupted, train

PASSAGE = {"id": "p0", "title": "France", "text": "The capital of France is Paris."}
TEMPORARY = re.compile(r"\.tmp$|\.tmp-")  # the atomic writers' temp files and staging folders


# ----- faults ---------------------------------------------------------------------------------------------------

@pytest.fixture()
def tmpfs(tmp_path):
    """``tmpfs(name, size)`` mounts a tmpfs of ``size`` at ``tmp_path / name``; all are unmounted at teardown."""
    mounted: list[Path] = []

    def mount(name: str = "disk", size: str = "64k") -> Path:
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}): a full or "
                        "read-only file system cannot be injected without one (run as root)")
        mounted.append(point)
        return point

    yield mount
    if "chromadb" in sys.modules:  # chromadb keeps its SQLite file open in a process-wide cache
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
    gc.collect()
    for point in reversed(mounted):
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(point)], check=True)


def fill(disk: Path, leave: int = 0) -> None:
    """Write a filler file until the file system is full, then give back ``leave`` bytes (whole pages)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        with pytest.raises(OSError) as full:
            while True:
                handle.write(b"x" * 4096)
        assert full.value.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave))


def remount_read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


# ----- what every case checks -------------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def assert_refused(code: int, stderr: str, *names: str) -> None:
    """Exit code 2, no traceback, exactly one ``error:`` line, which holds every string of ``names``."""
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-2000:]
    for name in names:
        assert name in errors[0], errors[0]


def assert_no_temporaries(folder: Path) -> None:
    left = [str(p) for p in folder.rglob("*") if TEMPORARY.search(p.name)]
    assert not left, left


def import_argv(tiny_dir: Path, pt_file: Path, out: Path) -> list[str]:
    return ["import-spring", str(pt_file), "--model", str(tiny_dir), "--out", str(out)]


@pytest.fixture()
def pt_file(tmp_path) -> Path:
    """An official-SPRING-style token file (50 x 64) outside the faulty file systems."""
    path = tmp_path / "tokens.pt"
    torch.save(torch.randn(50, 64, generator=torch.Generator().manual_seed(0)), path)
    return path


# ----- import-spring ----------------------------------------------------------------------------------------------

def test_import_spring_on_a_full_disk(tiny_dir, pt_file, tmpfs, capsys):
    disk = tmpfs("disk", "128k")
    assert main(import_argv(tiny_dir, pt_file, disk / "earlier")) == 0  # an artifact written before
    fill(disk)
    before = snapshot(disk)
    capsys.readouterr()
    code = main(import_argv(tiny_dir, pt_file, disk / "art"))
    assert_refused(code, capsys.readouterr().err, f"cannot write {disk / 'art'}", "no space left on device",
                   "free some space", "--out")
    assert snapshot(disk) == before  # no half-written artifact, not even an empty --out folder
    assert_no_temporaries(disk)


def test_import_spring_on_a_read_only_file_system(tiny_dir, pt_file, tmpfs, capsys):
    disk = tmpfs("disk", "128k")
    assert main(import_argv(tiny_dir, pt_file, disk / "earlier")) == 0
    remount_read_only(disk)
    before = snapshot(disk)
    capsys.readouterr()
    code = main(import_argv(tiny_dir, pt_file, disk / "art"))
    assert_refused(code, capsys.readouterr().err, str(disk / "art"), "read-only file system", "--out")
    assert snapshot(disk) == before


def test_import_spring_into_an_immutable_folder(tiny_dir, pt_file, tmp_path, capsys):
    """EPERM: the kernel refuses to create files in a folder with the immutable attribute, even for root."""
    out = tmp_path / "art"
    out.mkdir()
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here, so EPERM cannot be injected")
    try:
        before = snapshot(tmp_path)
        capsys.readouterr()
        code = main(import_argv(tiny_dir, pt_file, out))
        after = snapshot(tmp_path)
    finally:
        subprocess.run([chattr, "-i", str(out)], check=True)
    assert_refused(code, capsys.readouterr().err, f"cannot write {out}:", "operation not permitted", "--out")
    assert after == before


def test_import_spring_without_write_permission(tiny_dir, pt_file, tmp_path, capsys):
    """EACCES: a folder with mode 0o500. Root ignores the bits, so as root the command runs in a process whose
    capability bounding set lacks CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "earlier.txt").write_text("written before\n")
    argv = import_argv(tiny_dir, pt_file, locked / "art")
    locked.chmod(0o500)
    try:
        before = snapshot(tmp_path)
        if os.geteuid() != 0:
            capsys.readouterr()
            code, stderr = main(argv), capsys.readouterr().err
        else:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root, which ignores permission bits, and setpriv (to drop "
                            "CAP_DAC_OVERRIDE) is missing, so EACCES cannot be injected")
            result = subprocess.run(
                [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
                 sys.executable, "-m", "spring_cli", *argv],
                capture_output=True, text=True, timeout=120,
            )
            if result.stderr.startswith("setpriv:"):
                pytest.skip(f"setpriv cannot drop capabilities here ({result.stderr.strip()})")
            code, stderr = result.returncode, result.stderr
        after = snapshot(tmp_path)
    finally:
        locked.chmod(0o700)
    assert_refused(code, stderr, f"cannot write {locked / 'art'}", "permission denied", "--out")
    assert after == before


# ----- index ------------------------------------------------------------------------------------------------------

def write_corpus(path: Path, count: int, *, distinct: bool = False) -> Path:
    """``count`` passages of 60 words: the same word, or (``distinct``) words of their own, for a large index."""
    words = (lambda i: " ".join(f"w{i}x{j}" for j in range(60))) if distinct else (lambda i: "word " * 60)
    path.write_text("".join(json.dumps({**PASSAGE, "id": f"p{i}", "text": f"Passage {i}. " + words(i)}) + "\n"
                            for i in range(count)))
    return path


@pytest.mark.parametrize(("fault", "cause", "passages"), [("full", "no space left on device", 300),
                                                         ("nearly full", "no space left on device", 300),
                                                         ("read-only", "read-only file system", 3)])
def test_index_on_a_refusing_disk_keeps_the_store(tmp_path, tmpfs, capsys, fault, cause, passages):
    """``nearly full``: two pages left, so the index's arrays are cut by a short write (numpy reports it with no
    errno, which is still a full disk)."""
    disk = tmpfs("disk", "256k")
    store = disk / "store"
    assert main(["index", str(write_corpus(tmp_path / "one.jsonl", 1)), "--store", str(store), "--backend",
                 "bm25"]) == 0
    fill(disk, leave=8192 if fault == "nearly full" else 0) if "full" in fault else remount_read_only(disk)
    before = snapshot(disk)
    capsys.readouterr()
    more = write_corpus(tmp_path / "more.jsonl", passages, distinct=fault == "nearly full")
    code = main(["index", str(more), "--store", str(store), "--backend", "bm25"])
    assert_refused(code, capsys.readouterr().err, str(store), cause, "--store")
    assert snapshot(disk) == before  # passages, index and manifest as they were: the store still opens
    assert_no_temporaries(disk)
    assert main(["search", str(store), "capital", "--top-k", "1"]) == 0


def test_dense_index_on_a_full_disk(tmp_path, tmpfs, capsys):
    """The default backend: chromadb's SQLite reports a full disk as "database or disk is full", not an OSError."""
    disk = tmpfs("disk", "64k")
    (disk / "earlier.txt").write_text("written before\n")
    before = snapshot(disk)
    capsys.readouterr()
    code = main(["index", str(write_corpus(tmp_path / "corpus.jsonl", 3)), "--store", str(disk / "store")])
    assert_refused(code, capsys.readouterr().err, f"cannot write {disk / 'store'}", "no space left on device",
                   "--store")
    after = snapshot(disk)
    assert {name: data for name, data in after.items() if name in before} == before


# ----- train --checkpoint-every -----------------------------------------------------------------------------------

def interrupted_run(tiny_dir: Path, tmp_path: Path, out: Path) -> tuple[Path, list[str]]:
    """A run stopped after step 3 (checkpoints step-2 and step-3 on disk); returns the QA file and the CLI
    arguments that resume it with ``--checkpoint-every 2``."""
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"id": f"q{i}", "question": "What is the capital of France?",
                                      "answers": ["Paris"], "passages": [PASSAGE]}) + "\n" for i in range(4)))
    settings = dict(model=str(tiny_dir), data=[str(qa)], out=str(out), n=6, lr=5e-2, batch_size=2, max_steps=6,
                    precision="fp32", checkpoint_every=2)

    def stop_after_3(record):
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(TrainConfig(**settings), show_progress=False, on_step=stop_after_3)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    return qa, ["train", "--model", str(tiny_dir), "--data", str(qa), "--out", str(out), "--n", "6", "--lr", "5e-2",
                "--batch-size", "2", "--max-steps", "6", "--precision", "fp32", "--checkpoint-every", "2",
                "--resume", "--quiet"]


def test_train_checkpoint_on_a_full_disk_keeps_the_earlier_checkpoints(tiny_dir, tmp_path, tmpfs, capsys):
    disk = tmpfs("disk", "512k")
    out = disk / "out"
    _, argv = interrupted_run(tiny_dir, tmp_path, out)
    fill(disk, leave=2 * 4096)  # room for the log, not for the next checkpoint
    before = snapshot(disk)
    capsys.readouterr()
    code = main(argv)
    assert_refused(code, capsys.readouterr().err, f"cannot write {out}", "no space left on device", "--out")
    after = snapshot(disk)
    log = "train_log.jsonl"
    assert {name: data for name, data in after.items() if name != f"out/{log}"} == \
           {name: data for name, data in before.items() if name != f"out/{log}"}
    # The log keeps its lines and gained step 4, whole: the step ran, its checkpoint did not fit.
    assert after[f"out/{log}"].startswith(before[f"out/{log}"])
    steps = [json.loads(line)["step"] for line in after[f"out/{log}"].decode().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert_no_temporaries(disk)


def test_train_on_a_read_only_file_system(tiny_dir, tmp_path, tmpfs, capsys):
    disk = tmpfs("disk", "512k")
    out = disk / "out"
    _, argv = interrupted_run(tiny_dir, tmp_path, out)
    remount_read_only(disk)
    before = snapshot(disk)
    capsys.readouterr()
    code = main(argv)
    assert_refused(code, capsys.readouterr().err, f"cannot write {out}", "read-only file system", "--out")
    assert snapshot(disk) == before


# ----- eval ---------------------------------------------------------------------------------------------------

def test_eval_rerun_on_a_full_disk_keeps_the_earlier_report(tiny_dir, tmp_path, tmpfs, capsys):
    """A rerun with the same --out resumes and rewrites the reports. Here it has no new answer to add, only a longer
    report (a longer --k is recorded in its config), which no longer fits: the report of the run before stays whole
    (it was rewritten in place and cut at the first full page)."""
    disk = tmpfs("disk", "128k")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"id": f"q{i}", "question": "What is the capital of France?",
                                      "answers": ["Paris"], "passages": [PASSAGE]}) + "\n" for i in range(2)))
    argv = ["eval", "--model", str(tiny_dir), "--data", str(qa), "--out", str(disk / "ev"), "--methods", "concat",
            "--max-new-tokens", "2"]
    assert main([*argv, "--k", "1"]) == 0
    assert (disk / "ev" / "results.json").stat().st_size < 4096  # one page, the rerun's report needs two
    fill(disk)
    before = snapshot(disk)
    capsys.readouterr()
    code = main([*argv, "--k", ",".join(["1"] * 3000)])
    assert_refused(code, capsys.readouterr().err, f"cannot write {disk / 'ev'}", "no space left on device",
                   "--out")
    assert snapshot(disk) == before
    json.loads((disk / "ev" / "results.json").read_text())
    assert_no_temporaries(disk)


# ----- a command with no special handling: augment ---------------------------------------------------------------

def test_augment_on_a_full_disk(tmp_path, tmpfs, capsys):
    """The mapping lives in ``main``, so any writing command gets it. ``augment`` appends to --out (a rerun resumes
    and cuts a half-written last line), so the lines written before are kept as the start of the file."""
    disk = tmpfs("disk", "64k")
    aug = disk / "aug.jsonl"
    assert main(["augment", str(write_corpus(tmp_path / "one.jsonl", 1)), "--out", str(aug), "--augmenter",
                 "cloze", "--quiet"]) == 0
    earlier = aug.read_bytes()
    fill(disk)
    capsys.readouterr()
    code = main(["augment", str(write_corpus(tmp_path / "more.jsonl", 300)), "--out", str(aug), "--augmenter",
                 "cloze", "--quiet"])
    assert_refused(code, capsys.readouterr().err, f"cannot write {aug}", "no space left on device", "--out")
    assert aug.read_bytes().startswith(earlier)
