"""Output folders of the commands: refuse one that holds something else, and write a new one all or nothing."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path

from spring_core.errors import SpringError


def refuse_existing_output(path: str | Path, flag: str) -> None:
    """A command that writes a new folder refuses one that already holds anything (nothing is overwritten)."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise SpringError(f"{flag} {path} already exists and is not empty; choose a new folder (nothing was "
                          "overwritten)")


def write_new_folder(out: Path, write: Callable[[Path], object]) -> None:
    """``write(out)`` into a folder that is absent or empty; if it fails, ``out`` is left as it was (a half-written
    artifact would make the next try refuse a non-empty --out)."""
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        write(out)
    except BaseException:
        for child in out.iterdir() if out.is_dir() else ():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
