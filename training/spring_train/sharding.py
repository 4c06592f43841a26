"""Which documents this process encodes when `parametrize` runs as several processes (`accelerate launch`,
torchrun): each takes every N-th document of the input, by position, and writes into the one store.

The share is fixed by the input order alone, before anything is skipped, so processes that start at different
times, or a rerun after some of them were killed, split the same documents the same way; the store's write lock
(``AdapterStore``) makes their writes safe, and each write is a whole shard, so a killed process loses only the
shard it was encoding.

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
