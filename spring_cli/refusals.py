"""The operating system refusing a write the user can fix (a full disk or quota, a read-only file system, missing
permissions), found in any exception a command raised, as one line that names the path, the cause and the remedy.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
from pathlib import Path

# errno -> (the cause, what to do about it)
_REFUSALS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free some space"),
    errno.EROFS: ("read-only file system", "remount it read-write"),
    errno.EACCES: ("permission denied", "give this user write permission there"),
    errno.EPERM: ("operation not permitted", "check its permissions and attributes with ls -ld and lsattr"),
}
if hasattr(errno, "EDQUOT"):
    _REFUSALS[errno.EDQUOT] = ("disk quota exceeded", "free some space within your quota")
# The same refusals as libraries in other languages report them: Rust's io::Error (safetensors, chromadb,
# tokenizers) ends with "(os error N)"; SQLite, under chromadb's dense store, has messages of its own.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_SQLITE_REFUSALS = {
    "database or disk is full": (errno.ENOSPC, None),
    "attempt to write a readonly database": (errno.EROFS, "the database is read-only (a read-only file system or "
                                                          "no write permission)"),
}
# Temporary names of the atomic writers (".name.XXXX.tmp", ".tmp-step-N-pid", ".index.tmp-X", "name.tmp-pid-X"):
# the message names the folder that holds them, not a file that is gone by the time it is read.
_TEMPORARY = re.compile(r"^\..*\.tmp$|\.tmp-")


def refused_write_message(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a write the operating system refused (ENOSPC, EDQUOT, EROFS, EACCES, EPERM), found in ``exc`` or
    the exceptions it came from: the path, the cause and what to do. ``None`` for any other exception."""
    refusal = _find_refusal(exc)
    if refusal is None:
        return None
    code, path, cause = refusal
    output, other = _output_location(args)
    if path is None:  # write() on a full disk, or a library that does not say: the command's output
        path = output
    ours = _related(path, output)
    reason, remedy = _REFUSALS[code]
    if code in (errno.EACCES, errno.EPERM) and not ours:  # e.g. an input file this user may not read
        return f"cannot access {_shown_path(path)}: {cause or reason} (check its permissions)"
    return f"cannot write {_shown_path(path)}: {cause or reason} ({remedy}{f' or {other}' if ours else ''})"


def _find_refusal(exc: BaseException) -> tuple[int, str | None, str | None] | None:
    """(errno, path or None, cause or None) of the first refused write in ``exc``'s chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _REFUSALS:
            name = current.filename2 if current.filename2 is not None else current.filename
            return current.errno, os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else None, None
        text = str(current)
        rust = _RUST_OS_ERROR.search(text)
        if rust and int(rust.group(1)) in _REFUSALS:
            return int(rust.group(1)), None, None
        for needle, (code, cause) in _SQLITE_REFUSALS.items():
            if needle in text:
                return code, None, cause
        current = current.__cause__ or current.__context__
    return None


def _output_location(args: argparse.Namespace) -> tuple[str, str]:
    """Where the command writes, and how the user picks another place."""
    if getattr(args, "out", None):
        return str(args.out), "choose another --out"
    if args.command == "index":
        return str(args.store), "choose another --store"
    from spring_core.model.loading import spring_home  # the rest write only the cache (converted GGUF models)

    return str(spring_home()), "point SPRING_RAG_HOME at another folder"


def _related(path: str, output: str) -> bool:
    """Whether ``path`` is the output, lies inside it, or is a folder that creating it creates."""
    path_, output_ = Path(os.path.abspath(path)), Path(os.path.abspath(output))
    return path_ == output_ or output_ in path_.parents or path_ in output_.parents


def _shown_path(path: str) -> str:
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if i and _TEMPORARY.search(part):
            return str(Path(*parts[:i]))
    return path
