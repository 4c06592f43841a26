"""Run blocking generation from async code without blocking the event loop.

Example:
    >>> import asyncio
    >>> prompt = sm.prompt_parts(question, [passage], 10)
    >>> async def answer():
    ...     return [delta async for delta in iterate_in_thread(lambda: sm.stream_from_prompt(prompt, max_new_tokens=4))]
    >>> "".join(asyncio.run(answer())) == sm.generate_from_prompt(prompt, max_new_tokens=4).text   # same greedy text
    True
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_DONE = object()


async def iterate_in_thread(make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Iterate a blocking iterator in a worker thread, handing its items to the event loop as they come.

    The thread owns the iterator (creates, drains and closes it), so the loop never blocks; when the consumer
    stops early, the thread closes the iterator after its next item, which cancels the generation behind it.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    stopped = threading.Event()

    def hand_over(item: Any, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, error))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stopped.set()

    def produce() -> None:
        try:
            iterator = make_iterator()
            try:
                for item in iterator:
                    hand_over(item)
                    if stopped.is_set():
                        break
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # handed to the consumer, which re-raises it
            hand_over(_DONE, exc)
            return
        hand_over(_DONE)

    # A copy of the caller's context travels with the work (per-call state such as active document adapters).
    threading.Thread(target=contextvars.copy_context().run, args=(produce,), name="spring-rag-async",
                     daemon=True).start()
    try:
        while True:
            item, error = await queue.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stopped.set()
