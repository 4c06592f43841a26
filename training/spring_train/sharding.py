"""Which documents this process handles when `parametrize` or `augment` runs as several processes (`accelerate
launch`, torchrun): each takes every N-th document of the input, by position, and writes into the one output.

The share is fixed by the input order alone, before anything is skipped, so processes that start at different
times, or a rerun after some of them were killed, split the same documents the same way. The outputs' locks make
the writes safe: the store's write lock (``AdapterStore``), each write a whole shard, and the augmented file's lock
(``spring_train.augment.append_lines``), each write a whole chunk of lines; a killed process loses only the shard
or chunk it was writing.

Example:
    >>> share(["a", "b", "c", "d", "e"], 1, 2)
    ['b', 'd']
    >>> process_share({"RANK": "1", "WORLD_SIZE": "2"})
    (1, 2)
    >>> process_share({})                      # not launched: one process does everything
    (0, 1)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TypeVar

from spring_train.config import ConfigError

T = TypeVar("T")


def process_share(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(index, count)`` of this process among those launched together (``RANK``, ``WORLD_SIZE``)."""
    env = os.environ if env is None else env
    try:
        index, count = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise ConfigError(f"RANK and WORLD_SIZE must be integers (got {env.get('RANK')!r}, "
                          f"{env.get('WORLD_SIZE')!r}); launch with `accelerate launch` or torchrun") from exc
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"RANK {index} is not a process of WORLD_SIZE {count}; launch with `accelerate launch` or "
                          "torchrun")
    return index, count


def share(items: Sequence[T], index: int, count: int) -> list[T]:
    """Every ``count``-th item starting at ``index``: this process's documents."""
    return list(items[index::count])
