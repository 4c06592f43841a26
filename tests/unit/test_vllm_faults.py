"""The vLLM backend against a real, misbehaving OpenAI-compatible HTTP server on 127.0.0.1 (issue #29).

The server below is a real ``http.server`` speaking the completions API; each test scripts how it misbehaves: a
stream cut after two deltas, an error event, bodies that are not JSON or hold no choice, a slow reply, keep-alive
lines forever, a server that never stops sending, 503s while it "starts". The client must never report a partial
answer as finished, must not outlive its deadline by more than a moment, and must say truthfully what happened.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import socketserver
import threading
import time
from collections.abc import Callable

import pytest

from spring_core import SpringModel
from spring_core.errors import DeadlineError, ServerError, ServerReplyError
from spring_core.options import generation_settings
from spring_core.serving import VLLMBackend
from spring_core.types import PromptParts

PROMPT = PromptParts("Question: 2+2?\nAnswer:")
MODELS = {"object": "list", "data": [{"id": "tiny", "object": "model"}]}


def event(payload: dict | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


def delta(text: str, finish: str | None = None) -> bytes:
    return event({"choices": [{"index": 0, "text": text, "finish_reason": finish}]})


class FaultyServer:
    """A threaded HTTP server whose /v1/completions does what ``script(handler, body)`` says; it counts POSTs."""

    def __init__(self, script: Callable[[http.server.BaseHTTPRequestHandler, dict], None]):
        owner = self
        self.posts = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self.reply(200, json.dumps(MODELS).encode(), "application/json")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                owner.posts += 1
                try:
                    script(self, body)
                except (BrokenPipeError, ConnectionResetError):  # the client hung up, as it should
                    pass

            def reply(self, status: int, payload: bytes, kind: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def start_stream(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def serve():
    servers = []

    def start(script):
        servers.append(FaultyServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def sm(tiny):
    return SpringModel(*tiny)


def backend(server, **options):
    return VLLMBackend(server.url, check_model=False, backoff=0.05, **options)


SETTINGS = generation_settings({"max_new_tokens": 4})


def stream_text(b, sm):
    return "".join(b.stream(sm, PROMPT, SETTINGS))


def astream_text(b, sm):
    async def collect():
        return "".join([d async for d in b.astream(sm, PROMPT, SETTINGS)])

    return asyncio.run(collect())


# ----- replies that must not be believed ---------------------------------------------------------------------


def cut_after_two_deltas(handler, body):
    handler.start_stream()
    handler.wfile.write(delta(" A") + delta(" B"))  # no finish reason, no usage, no [DONE]


def error_event(handler, body):
    handler.start_stream()
    handler.wfile.write(delta(" A") + event({"error": {"message": "engine crashed", "code": 500}}))


def not_json_event(handler, body):
    handler.start_stream()
    handler.wfile.write(delta(" A") + event("{oops"))


@pytest.mark.parametrize("script, message", [
    (cut_after_two_deltas, "ended after 2 deltas .* without the server's finish reason"),
    (error_event, "error in the stream after 1 deltas: engine crashed"),
    (not_json_event, "not JSON"),
])
def test_a_broken_stream_is_an_error_never_a_finished_answer(serve, sm, script, message):
    b = backend(serve(script))
    for read in (stream_text, astream_text):
        with pytest.raises(ServerReplyError, match=message):
            read(b, sm)


@pytest.mark.parametrize("payload, message", [
    (b"<html>gateway</html>", "not JSON"),
    (json.dumps({"id": "x"}).encode(), "holds no choice"),
    (json.dumps({"choices": []}).encode(), "holds no choice"),
    (json.dumps({"choices": [{"text": "A", "finish_reason": None}]}).encode(), "not a finished completion"),
])
def test_a_malformed_reply_is_an_error_that_shows_it(serve, sm, payload, message):
    def script(handler, body):
        if body.get("stream"):
            handler.start_stream()
            handler.wfile.write(payload)  # not server-sent events at all: no finish reason
        else:
            handler.reply(200, payload)

    b = backend(serve(script))
    with pytest.raises(ServerReplyError, match=message):
        b.generate(sm, PROMPT, SETTINGS)
    with pytest.raises(ServerReplyError, match=message):
        asyncio.run(b.agenerate(sm, PROMPT, SETTINGS))
    with pytest.raises(ServerReplyError):
        stream_text(b, sm)


def test_a_healthy_reply_keeps_the_servers_finish_reason(serve, sm):
    def script(handler, body):
        if body.get("stream"):
            handler.start_stream()
            handler.wfile.write(b": keep-alive\n\n" + delta(" A") + delta(" B", "length")
                                + event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}})
                                + event("[DONE]"))
        else:
            handler.reply(200, json.dumps({"choices": [{"text": " A B", "finish_reason": "length"}],
                                           "usage": {"prompt_tokens": 7, "completion_tokens": 2}}).encode())

    b = backend(serve(script))
    generation = b.generate(sm, PROMPT, SETTINGS)
    stream = b.stream(sm, PROMPT, SETTINGS)
    assert "".join(stream) == generation.text == " A B"
    assert stream.result.finish_reason == generation.finish_reason == "length"
    assert stream.result.usage.completion_tokens == 2


def test_a_server_that_never_stops_sending_is_cut_off(serve, sm):
    def script(handler, body):
        handler.start_stream()
        for _ in range(200):
            handler.wfile.write(delta(" x"))
            handler.wfile.flush()
            time.sleep(0.005)

    with pytest.raises(ServerReplyError, match="kept sending after the 4 tokens asked for"):
        stream_text(backend(serve(script)), sm)


# ----- deadlines and retries ---------------------------------------------------------------------------------


def slow(handler, body):
    time.sleep(3)
    handler.reply(200, json.dumps({"choices": [{"text": " A", "finish_reason": "stop"}]}).encode())


def keep_alive_forever(handler, body):
    handler.start_stream()
    for _ in range(600):
        handler.wfile.write(b": keep-alive\n\n")
        handler.wfile.flush()
        time.sleep(0.05)


def trickle_forever(handler, body):
    handler.start_stream()
    for _ in range(600):
        handler.wfile.write(b"data:")  # bytes, but never a whole event
        handler.wfile.flush()
        time.sleep(0.05)


@pytest.mark.parametrize("script", [slow, keep_alive_forever, trickle_forever])
def test_the_deadline_bounds_the_whole_call(serve, sm, script):
    b = backend(serve(script), deadline=1.0, request_timeout=30)
    for call in (lambda: b.generate(sm, PROMPT, SETTINGS), lambda: stream_text(b, sm),
                 lambda: asyncio.run(b.agenerate(sm, PROMPT, SETTINGS)), lambda: astream_text(b, sm)):
        began = time.monotonic()
        with pytest.raises(DeadlineError, match="deadline of 1 s"):
            call()
        assert time.monotonic() - began < 1.6


def test_a_request_the_server_accepted_is_not_sent_again(serve, sm):
    server = serve(slow)
    b = backend(server, request_timeout=0.5, max_retries=6)
    began = time.monotonic()
    with pytest.raises(ServerError, match=r"sent nothing for request_timeout=0.5 s \(1 try"):
        b.generate(sm, PROMPT, SETTINGS)
    assert server.posts == 1 and time.monotonic() - began < 2


def test_a_starting_server_is_retried_and_the_tries_are_counted_truthfully(serve, sm):
    replies = iter([503, 503])

    def script(handler, body):
        status = next(replies, 200)
        if status != 200:
            handler.reply(status, b'{"error": {"message": "starting"}}')
        else:
            handler.reply(200, json.dumps({"choices": [{"text": " 4", "finish_reason": "stop"}]}).encode())

    server = serve(script)
    assert backend(server, max_retries=3).generate(sm, PROMPT, SETTINGS).text == " 4"
    assert server.posts == 3
    replies = iter([503] * 10)
    with pytest.raises(ServerError, match="answered 503: starting"):
        backend(server, max_retries=1).generate(sm, PROMPT, SETTINGS)


def test_a_server_killed_mid_stream_says_so_once(serve, sm):
    def script(handler, body):
        handler.start_stream()
        handler.wfile.write(delta(" A"))
        handler.wfile.flush()
        handler.connection.shutdown(2)  # the process dies: the connection drops mid-reply

    server = serve(script)
    with pytest.raises(ServerReplyError) as caught:
        stream_text(backend(server, max_retries=3), sm)
    assert server.posts == 1 and "tries" not in str(caught.value)
