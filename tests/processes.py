"""Running test functions in fresh worker processes, for the tests where several processes race on one folder.

The workers are *spawned*, never forked: a fork of a process whose torch thread pool has run (any earlier test on
the same pytest worker) leaves the child's pool locked, and the child hangs at its first parallel tensor operation.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any


def exit_codes(calls: Sequence[tuple[Callable[..., Any], tuple]], timeout: float) -> list[int | None]:
    """Run each ``(function, arguments)`` in its own spawned process; their exit codes (``None`` for one still
    running after ``timeout`` seconds, which is then killed so no process outlives the test).

    The functions start together, once every process has started: spawning takes a second or more each, and a
    race whose first runner is done before the second starts tests nothing.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(calls))
    workers = [context.Process(target=_when_all_started, args=(barrier, function, arguments))
               for function, arguments in calls]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout)
    codes = [worker.exitcode for worker in workers]
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join()
    return codes


def _when_all_started(barrier: Any, function: Callable[..., Any], arguments: tuple) -> None:
    barrier.wait()
    function(*arguments)
