"""The vLLM backend's HTTP layer: retries that are safe, one whole-call deadline, replies checked before use.

* **Retries** happen only where nothing was received and repeating is safe: a connection that could not be made,
  or a status saying the server is starting or overloaded (429, 502, 503, 504). A request the server accepted and
  then did not answer in time is not sent again, and a stream that broke after its first byte is an error.
* **One deadline per call** (``deadline`` seconds, ``None``: none): connecting, every try, the back-off between
  tries and reading a stream all count, and keep-alive lines or a trickling server do not extend it. A blocked
  read is woken at the deadline by shutting the socket, so a call never outlives it by more than a moment.
* **Messages count tries truthfully** and name the real cause (refused, timed out, cut).

Example:
    >>> client = ServerClient("http://127.0.0.1:8000", request_timeout=30, max_retries=2)     # doctest: +SKIP
    >>> with client.open("GET", "/v1/models", deadline=Deadline(5)) as reply:               # doctest: +SKIP
    ...     reply.read()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from spring_core.errors import DeadlineError, ServerError, ServerReplyError

RETRY_STATUS = frozenset({429, 502, 503, 504})
"""Statuses that say the server is starting or overloaded: the request was not run, so it can be sent again."""
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
"""Transport errors before anything was sent: safe to retry."""


class Deadline:
    """The end of one call, ``seconds`` from now (``None``: no end).

    Example:
        >>> Deadline(None).remaining()
        inf
    """

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float:
        return math.inf if self.end is None else self.end - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def error(self, what: str) -> DeadlineError:
        return DeadlineError(f"{what} took longer than the call's deadline of {self.seconds:g} s and was stopped")


class ServerClient:
    """HTTP to one server with the retry, deadline and error rules of the module docstring.

    Args:
        base_url: the server, e.g. ``"http://127.0.0.1:8000"``.
        headers: sent with every request (e.g. the bearer token).
        request_timeout: seconds one request may wait to connect, to send, or for each read.
        max_retries: how many times a request that was not run is sent again.
        backoff: the first wait between tries (doubled each time).
        error_for: turns a refusing status and its body into the ``ServerError`` to raise.
    """

    def __init__(self, base_url: str, *, headers: dict[str, str], request_timeout: float, max_retries: int,
                 backoff: float, error_for: Callable[[int, str], ServerError]):
        self.base_url, self.headers = base_url, headers
        self.request_timeout, self.max_retries, self.backoff = request_timeout, max_retries, backoff
        self.error_for = error_for

    # ----- sync ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def open(self, method: str, path: str, body: Any = None, *, deadline: Deadline,
             allow: frozenset[int] = frozenset()) -> Iterator[httpx.Response]:
        """The server's response (status 200 or in ``allow``), its body not read yet; errors as the module says."""
        tries = 0
        while True:
            tries += 1
            handed_over = False
            try:
                with httpx.Client(timeout=self._timeout(deadline), headers=self.headers) as client, \
                        client.stream(method, self.base_url + path, json=body) as reply, _watchdog(reply, deadline):
                    verdict = self._verdict(reply.status_code, tries, deadline, allow)
                    if verdict == "use":
                        handed_over = True
                        yield reply
                        return
                    self._refuse_or_retry(verdict, reply.status_code, reply.read())
            except httpx.HTTPError as exc:
                self._raise_unless_retried(exc, tries, deadline, handed_over)
            self._back_off(tries, deadline)

    def json(self, method: str, path: str, body: Any = None, *, deadline: Deadline) -> Any:
        """The JSON body of a request's 200 response (a ``ServerReplyError`` for a body that is not JSON)."""
        with self.open(method, path, body, deadline=deadline) as reply:
            text = reply.read().decode("utf-8", "replace")
        if deadline.expired():  # the watchdog shut the socket: a close-delimited body ends there, cut
            raise deadline.error(f"the request to {self.base_url}{path}")
        return parse_json(text, path)

    # ----- async ---------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def aopen(self, method: str, path: str, body: Any = None, *, deadline: Deadline,
                    allow: frozenset[int] = frozenset()) -> AsyncIterator[httpx.Response]:
        """Async twin of ``open``; the deadline is an ``asyncio`` timeout around the whole call."""
        try:
            async with asyncio.timeout(None if deadline.end is None else deadline.remaining()):
                tries = 0
                while True:
                    tries += 1
                    handed_over = False
                    try:
                        async with httpx.AsyncClient(timeout=self._timeout(deadline), headers=self.headers) as client, \
                                client.stream(method, self.base_url + path, json=body) as reply:
                            verdict = self._verdict(reply.status_code, tries, deadline, allow)
                            if verdict == "use":
                                handed_over = True
                                yield reply
                                return
                            self._refuse_or_retry(verdict, reply.status_code, await reply.aread())
                    except httpx.HTTPError as exc:
                        self._raise_unless_retried(exc, tries, deadline, handed_over)
                    await asyncio.sleep(self._delay(tries, deadline))
        except TimeoutError as exc:
            if isinstance(exc, DeadlineError):
                raise
            raise deadline.error(f"the request to {self.base_url}{path}") from None

    async def ajson(self, method: str, path: str, body: Any = None, *, deadline: Deadline) -> Any:
        async with self.aopen(method, path, body, deadline=deadline) as reply:
            return parse_json((await reply.aread()).decode("utf-8", "replace"), path)

    # ----- the rules -----------------------------------------------------------------------------------------

    def _verdict(self, status: int, tries: int, deadline: Deadline, allow: frozenset[int]) -> str:
        """``"use"`` the reply, ``"retry"`` (the server did not run it), or ``"refuse"``."""
        if status in RETRY_STATUS and self._can_retry(tries, deadline):
            return "retry"
        return "use" if status == 200 or status in allow else "refuse"

    def _refuse_or_retry(self, verdict: str, status: int, body: bytes) -> None:
        if verdict == "refuse":
            raise self.error_for(status, body.decode("utf-8", "replace"))

    def _timeout(self, deadline: Deadline) -> float:
        return max(0.001, min(self.request_timeout, deadline.remaining()))

    def _delay(self, tries: int, deadline: Deadline) -> float:
        delay = self.backoff * 2 ** (tries - 1)
        if delay >= deadline.remaining():
            raise deadline.error(f"waiting for the server at {self.base_url} ({tries} tries)")
        return delay

    def _back_off(self, tries: int, deadline: Deadline) -> None:
        time.sleep(self._delay(tries, deadline))

    def _can_retry(self, tries: int, deadline: Deadline) -> bool:
        return tries <= self.max_retries and not deadline.expired()

    def _raise_unless_retried(self, exc: httpx.HTTPError, tries: int, deadline: Deadline, handed_over: bool) -> None:
        """Return (to try again) only for an error before anything was sent, while tries are left."""
        if deadline.expired():
            raise deadline.error(f"the call to {self.base_url}") from exc
        if handed_over:  # the reply was being read: never sent again, and never half believed
            raise ServerReplyError(f"the connection to {self.base_url} broke while its reply was read "
                                   f"({type(exc).__name__}: {exc})") from exc
        if isinstance(exc, _NOT_SENT) and self._can_retry(tries, deadline):
            return
        tried = f"{tries} {'try' if tries == 1 else 'tries'}"
        if isinstance(exc, _NOT_SENT):
            raise ServerError(f"cannot reach the vLLM server at {self.base_url} after {tried} ({type(exc).__name__}: "
                              f"{exc}); is it running? `spring-rag serve <model>` starts one") from exc
        if isinstance(exc, httpx.TimeoutException):
            raise ServerError(f"the vLLM server at {self.base_url} accepted the request but sent nothing for "
                              f"request_timeout={self.request_timeout:g} s ({tried}; a request it may be running is "
                              "not sent again); raise request_timeout, or check the server's load") from exc
        raise ServerError(f"the connection to the vLLM server at {self.base_url} failed after {tried} "
                          f"({type(exc).__name__}: {exc})") from exc


def parse_json(text: str, what: str) -> Any:
    """``text`` as JSON, or a ``ServerReplyError`` that shows what the server sent instead."""
    try:
        return json.loads(text)
    except ValueError:
        raise ServerReplyError(f"the server's reply to {what} is not JSON: {text[:200]!r}") from None


@contextlib.contextmanager
def _watchdog(reply: httpx.Response, deadline: Deadline) -> Iterator[None]:
    """Shut the reply's socket at the deadline, which wakes a read blocked on it (closing it from another thread
    does not)."""
    if deadline.end is None:
        yield
        return
    stream = reply.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    timer = threading.Timer(max(0.0, deadline.remaining()), _shutdown, args=(sock,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _shutdown(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
