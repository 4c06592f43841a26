"""The vLLM backend against a real, misbehaving OpenAI-compatible HTTP server on 127.0.0.1 (issue #29).

The server below is a real ``http.server`` speaking the completions API; each test scripts how it misbehaves: a
stream cut after two deltas, an error event, bodies that are not JSON or hold no choice, a slow reply, keep-alive
lines forever, a server that never stops sending, 503s while it "starts". The client must never report a partial
answer as finished, must not outlive its deadline by more than a moment, and must say truthfully what happened.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import http.server
import io
import json
import shutil
import socketserver
import threading
import time
from collections.abc import Callable

import pytest
import torch
from doctest_globals import document_tensors

from spring_core import SpringModel, VirtualTokens
from spring_core.errors import (
    DeadlineError,
    ModelMismatchError,
    OptionError,
    ServerAuthError,
    ServerError,
    ServerReplyError,
    ThinClientError,
)
from spring_core.options import generation_settings
from spring_core.parametric import AdapterStore, DocumentAdapters, LoraSpec
from spring_core.parametric.dyprag import DyPRAG, DyPRAGAdapters, DyPRAGConfig, ParameterTranslator
from spring_core.serving import VLLMBackend, as_backend
from spring_core.serving.thin import is_thin, thin_spring_model
from spring_core.serving.vllm import JOIN_TEMPLATE, PLACEHOLDER, PROBE_TEXT
from spring_core.types import PromptParts

PROMPT = PromptParts("Question: 2+2?\nAnswer:")
MODELS = {"object": "list", "data": [{"id": "tiny", "object": "model"}]}


def event(payload: dict | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


def delta(text: str, finish: str | None = None) -> bytes:
    return event({"choices": [{"index": 0, "text": text, "finish_reason": finish}]})


class FaultyServer:
    """A threaded HTTP server whose /v1/completions does what ``script(handler, body)`` says; it counts POSTs and
    requests. With ``key``, it refuses every request without ``Authorization: Bearer <key>`` as vLLM's own
    authentication does (401, ``{"error": "Unauthorized"}``), or with ``refuse`` instead of 401."""

    def __init__(self, script: Callable[[http.server.BaseHTTPRequestHandler, dict], None], *,
                 key: str | None = None, refuse: int = 401):
        owner = self
        self.posts = self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def authorized(self) -> bool:
                owner.requests += 1
                if key is None or self.headers.get("Authorization") == f"Bearer {key}":
                    return True
                self.reply(refuse, json.dumps({"error": "Unauthorized"}).encode())
                return False

            def do_GET(self):
                if self.authorized():
                    self.reply(200, json.dumps(MODELS).encode(), "application/json")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if not self.authorized():
                    return
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

    def start(script, **options):
        servers.append(FaultyServer(script, **options))
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


# ----- API keys ----------------------------------------------------------------------------------------------


def answer(handler, body):
    if body.get("stream"):
        handler.start_stream()
        handler.wfile.write(delta(" four", "stop") + event("[DONE]"))
    else:
        handler.reply(200, json.dumps({"choices": [{"text": " four", "finish_reason": "stop"}]}).encode())


def all_paths(b, sm) -> list[Callable[[], object]]:
    return [lambda: b.generate(sm, PROMPT, SETTINGS), lambda: asyncio.run(b.agenerate(sm, PROMPT, SETTINGS)),
            lambda: stream_text(b, sm), lambda: astream_text(b, sm)]


def test_a_key_is_sent_from_the_argument_or_from_vllm_api_key(serve, sm, monkeypatch):
    server = serve(answer, key="s3cret")
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    for read in all_paths(backend(server, api_key="s3cret"), sm):
        result = read()
        assert (result if isinstance(result, str) else result.text) == " four"
    monkeypatch.setenv("VLLM_API_KEY", "s3cret")  # vLLM's own variable, read by the client too
    assert backend(server).generate(sm, PROMPT, SETTINGS).text == " four"
    monkeypatch.setenv("VLLM_API_KEY", "stale")
    assert backend(server, api_key="s3cret").generate(sm, PROMPT, SETTINGS).text == " four"  # the argument wins


@pytest.mark.parametrize("status", [401, 403])
def test_a_missing_or_wrong_key_is_a_clear_error_sent_once(serve, sm, monkeypatch, status):
    server = serve(answer, key="s3cret", refuse=status)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    for b, said in ((backend(server, max_retries=3), "needs an API key and none was sent"),
                    (backend(server, max_retries=3, api_key="wrong-key"), r"refused the API key sent \(from api_key=")):
        for read in all_paths(b, sm):
            before, start = server.requests, time.monotonic()
            with pytest.raises(ServerAuthError, match=said) as caught:
                read()
            assert server.requests - before == 1 and time.monotonic() - start < 2  # never retried
            assert f"{status} " in str(caught.value) and "api_key=" in str(caught.value)
            assert "VLLM_API_KEY" in str(caught.value) and "wrong-key" not in str(caught.value)
    monkeypatch.setenv("VLLM_API_KEY", "also-wrong")
    with pytest.raises(ServerAuthError, match=r"from \$VLLM_API_KEY"):
        backend(server).generate(sm, PROMPT, SETTINGS)
    assert server.posts == 0


def test_an_empty_key_argument_sends_none_even_with_vllm_api_key_set(serve, sm, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "s3cret")
    with pytest.raises(ServerAuthError, match="none was sent"):
        backend(serve(answer, key="s3cret"), api_key="").generate(sm, PROMPT, SETTINGS)


def test_as_backend_carries_key_and_deadline_and_names_backend_in_its_refusals(serve, sm, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    server = serve(answer, key="s3cret")
    made = as_backend(server.url, api_key="s3cret", deadline=5, max_retries=1)
    assert isinstance(made, VLLMBackend) and made.deadline == 5 and made.http.max_retries == 1
    made.check_model = False
    assert made.generate(sm, PROMPT, SETTINGS).text == " four"
    assert as_backend(None) is None and as_backend(made) is made
    for bad in ("127.0.0.1:8000", "localhost"):
        with pytest.raises(OptionError, match=r"^backend must be None .* a server URL .*got '"):
            as_backend(bad)
    for other in (None, made):
        with pytest.raises(OptionError, match="api_key is sent to a server named by URL"):
            as_backend(other, api_key="s3cret")


# ----- the model check -----------------------------------------------------------------------------------------


def probe_reply(logprobs: dict | None) -> Callable:
    def script(handler, body):
        assert body["logprobs"] == 1 and body["return_tokens_as_token_ids"] is True
        handler.reply(200, json.dumps({"choices": [{"text": "x", "finish_reason": "length",
                                                    "logprobs": logprobs}]}).encode())

    return script


def test_a_server_token_outside_the_local_vocabulary_is_named_not_reported_as_nan(serve, sm):
    vocab = sm.model.get_output_embeddings().weight.shape[0]
    server = serve(probe_reply({"tokens": [f"token_id:{vocab + 40000}"], "token_logprobs": [-0.25]}))
    with pytest.raises(ModelMismatchError) as caught:
        VLLMBackend(server.url).generate(sm, PROMPT, SETTINGS)
    message = str(caught.value)
    assert f"has id {vocab + 40000}, outside this model's vocabulary of {vocab} tokens" in message
    assert "nan" not in message.lower() and "spring-rag serve <model>" in message


def test_a_different_log_prob_names_the_token_and_both_finite_values(serve, sm):
    server = serve(probe_reply({"tokens": ["token_id:5"], "token_logprobs": [-0.25]}))
    with pytest.raises(ModelMismatchError, match=r"\(id 5, '.*' here\) has log-prob -0\.250, this model gives it "
                                                 r"-\d+\.\d{3} \(tolerance 0\.1\)") as caught:
        VLLMBackend(server.url).generate(sm, PROMPT, SETTINGS)
    assert "nan" not in str(caught.value).lower()


@pytest.mark.parametrize("logprobs", [None, {"tokens": ["hello"], "token_logprobs": [-0.2]},
                                      {"tokens": ["token_id:5"], "token_logprobs": [None]}, {"tokens": []}])
def test_a_probe_reply_without_a_token_id_and_log_prob_says_so(serve, sm, logprobs):
    with pytest.raises(ServerReplyError, match="holds no next-token id and log-prob"):
        VLLMBackend(serve(probe_reply(logprobs)).url).generate(sm, PROMPT, SETTINGS)


VLLM_400 = {  # vLLM 0.32's own replies, word for word
    "width": "`prompt_embeds` hidden_size 576 does not match the model's hidden_size 640. (parameter=prompt_embeds)",
    "flag": "You must set `--enable-prompt-embeds` to input `prompt_embeds`.",
}


@pytest.mark.parametrize("case", ["width", "flag"])
def test_a_refused_embedding_is_told_apart_from_a_missing_flag(serve, sm, case):
    def script(handler, body):
        error = {"message": VLLM_400[case], "type": "BadRequestError", "param": "prompt_embeds", "code": 400}
        handler.reply(400, json.dumps({"error": error}).encode())

    server = serve(script)
    with pytest.raises(ServerError) as caught:
        backend(server, embeds="always").generate(sm, PROMPT, SETTINGS)
    message = str(caught.value)
    assert VLLM_400[case] in message and server.posts == 1  # a refusal is not retried
    if case == "width":
        assert "wrong width" in message and "another model" in message and "start it with" not in message
    else:
        assert "start it with --enable-prompt-embeds" in message


# ----- the thin client (issue #29 part 3): no transformer layer in the client -----------------------------------


class Recording:
    """A healthy server that answers the model-check and split probes (``logprobs``) with ``probe(body)`` --
    ``(token id, log-prob)`` -- and anything else with `` ok``, in the completions or the chat format (``messages``)
    as vLLM does; it keeps every body it was sent. ``refuse_chat``: a chat request gets vLLM's 400 for a request
    template it does not trust."""

    def __init__(self, probe: Callable[[dict], tuple[int, float]] = lambda body: (5, -0.5), *,
                 refuse_chat: bool = False):
        self.bodies: list[dict] = []
        self.probe = probe
        self.refuse_chat = refuse_chat

    def __call__(self, handler, body):
        self.bodies.append(body)
        chat = "messages" in body
        if chat and self.refuse_chat:
            message = ("Chat template is passed with request, but --trust-request-chat-template is not set. Refused "
                       "request with untrusted chat template.")
            handler.reply(400, json.dumps({"error": {"message": message, "code": 400}}).encode())
            return
        if body.get("logprobs"):
            token, logprob = self.probe(body)
            logprobs = ({"content": [{"token": f"token_id:{token}", "logprob": logprob}]} if chat else
                        {"tokens": [f"token_id:{token}"], "token_logprobs": [logprob]})
            answer = {"message": {"role": "assistant", "content": "x"}} if chat else {"text": "x"}
            handler.reply(200, json.dumps({"choices": [{**answer, "finish_reason": "length",
                                                        "logprobs": logprobs}]}).encode())
            return
        usage = {"prompt_tokens": 9, "completion_tokens": 1}
        if body.get("stream") and chat:  # a chat stream: a role delta, the content, the usage
            handler.start_stream()
            handler.wfile.write(event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
                                + event({"choices": [{"index": 0, "delta": {"content": " ok"},
                                                      "finish_reason": "stop"}]})
                                + event({"choices": [], "usage": usage}) + event("[DONE]"))
            return
        answer = {"message": {"role": "assistant", "content": " ok"}} if chat else {"text": " ok"}
        handler.reply(200, json.dumps({"choices": [{**answer, "finish_reason": "stop"}], "usage": usage}).encode())


def decoded(body: dict) -> torch.Tensor:
    """The tensor a body's ``prompt_embeds`` (or a ``prompt_embeds`` content part's ``data``) carries, as vLLM reads
    it."""
    return torch.load(io.BytesIO(base64.b64decode(body.get("prompt_embeds") or body["data"])), weights_only=True)


@pytest.fixture(scope="module")
def tiny_tokens(tiny, tmp_path_factory):
    """A virtual-token artifact made for the tiny model."""
    folder = tmp_path_factory.mktemp("tiny-tokens") / "tokens"
    VirtualTokens.from_text(tiny[0], n=6, tokenizer=tiny[1]).save(folder)
    return folder


@pytest.fixture(scope="module")
def thin(tiny_dir, tiny_tokens):
    return thin_spring_model(str(tiny_dir), tiny_tokens, pool=None)


def test_the_thin_client_sends_what_the_full_client_sends_and_checks_the_model_on_the_server(serve, tiny, thin,
                                                                                            tiny_tokens):
    full = SpringModel(*tiny, tokens=tiny_tokens)
    prompts = [full.prompt_parts("Who wrote Hamlet?", ["Hamlet was written by Shakespeare."], k) for k in (0, 1, 6)]
    bodies = {}
    for name, spring in (("full", full), ("thin", thin)):
        recording = Recording()
        server = serve(recording)
        check = VLLMBackend(server.url, check_model=name == "thin")  # the full client's check needs a real model
        answers = [check.generate(spring, p, SETTINGS) for p in prompts]
        assert [a.text for a in answers] == [" ok"] * 3 and [a.usage.virtual_tokens for a in answers] == [0, 1, 6]
        bodies[name] = recording.bodies
    probes = lambda recorded: [b for b in recorded if b.get("logprobs")]  # noqa: E731
    requests = lambda recorded: [b for b in recorded if not b.get("logprobs")]  # noqa: E731
    # the requests are the same bytes: token ids where there is no block, the same block rows where there is one
    assert requests(bodies["thin"]) == requests(bodies["full"])
    assert [("prompt" in b, "messages" in b) for b in requests(bodies["thin"])] == [(True, False), (False, True),
                                                                                   (False, True)]
    content = requests(bodies["thin"])[2]["messages"][0]["content"]
    ids = full.encode(prompts[2])
    start = ids.index(full.vocab_rows)
    assert torch.equal(decoded(content[1]), full.embed(torch.tensor([ids[start:start + 6]]))[0].detach())
    # the thin check: the same probe as ids and as the client's embeddings, scored by the server (no local forward);
    # then (both clients) the split probe: a prompt as ids, and as text, embedded rows, text
    thin_probes = probes(bodies["thin"])
    assert len(thin_probes) == 4 and thin_probes[0]["prompt"] == thin.encode(PromptParts(PROBE_TEXT))
    assert torch.equal(decoded(thin_probes[1]), thin.embed(torch.tensor([thin_probes[0]["prompt"]]))[0])
    assert [("messages" in b) for b in probes(bodies["full"])] == [False, True]
    assert thin.model.get_input_embeddings().rows.loaded < thin.model.get_input_embeddings().rows.num_rows


def test_a_split_request_is_the_block_rows_and_text_the_server_tokenizes_to_the_same_ids(serve, thin):
    prompt = thin.prompt_parts("Who wrote Hamlet? [r1]", ["Hamlet [r2] was written by Shakespeare."], 6)
    recording = Recording()
    split = VLLMBackend(serve(recording).url)
    assert split.generate(thin, prompt, SETTINGS).text == " ok"
    whole = Recording()
    assert VLLMBackend(serve(whole).url, split=False).generate(thin, prompt, SETTINGS).text == " ok"
    sent, whole_body = recording.bodies[-1], whole.bodies[-1]
    assert sent["chat_template"] == JOIN_TEMPLATE and sent["add_generation_prompt"] is False
    before, rows, after = sent["messages"][0]["content"]
    assert decoded(rows).shape == (6, thin.inputs.width) and decoded(whole_body).shape[0] > 6
    # what vLLM does with it: its tokenizer copy knows the placeholder, which it expands to one position per row
    marked = copy.deepcopy(thin.tokenizer)
    marked.add_special_tokens({"additional_special_tokens": [PLACEHOLDER]})
    placeholder = marked.convert_tokens_to_ids(PLACEHOLDER)
    served = marked(before["text"] + PLACEHOLDER + after["text"], add_special_tokens=False)["input_ids"]
    ids = thin.encode(prompt)
    start = served.index(placeholder)
    assert served[:start] + [thin.vocab_rows + i for i in range(6)] + served[start + 1:] == ids
    assert "[r2]" in before["text"] and "[r1]" in after["text"]  # marker-like text stays text
    assert len(json.dumps(sent)) < 0.6 * len(json.dumps(whole_body))
    stream = split.stream(thin, prompt, SETTINGS)  # the chat stream's deltas
    assert "".join(stream) == " ok" and stream.result.finish_reason == "stop"
    assert stream.result.usage.virtual_tokens == 6 and recording.bodies[-1]["stream"] is True


@pytest.mark.parametrize("server", ["refuses the template", "answers otherwise"])
def test_a_server_that_cannot_split_exactly_gets_the_whole_prompt_as_embeddings(serve, thin, server):
    recording = (Recording(refuse_chat=True) if server == "refuses the template" else
                 Recording(lambda body: (9, -3.0) if "messages" in body else (5, -0.5)))
    backend = VLLMBackend(serve(recording).url)
    prompt = thin.prompt_parts("Who?", ["X is Y."], 6)
    assert backend.generate(thin, prompt, SETTINGS).text == " ok"
    assert "prompt_embeds" in recording.bodies[-1] and decoded(recording.bodies[-1]).shape[0] == len(
        thin.encode(prompt))


def test_the_thin_check_refuses_embeddings_the_server_answers_differently_from_the_ids(serve, thin):
    server = serve(Recording(lambda body: (5, -0.5) if "prompt" in body else (7, -2.0)))
    with pytest.raises(ModelMismatchError, match=r"sent as token ids gets the next token id 5 .*log-prob -0\.500.*"
                                                 r"this client's input embeddings id 7 .*log-prob -2\.000.*"
                                                 r"embedding rows are not the served model's") as caught:
        VLLMBackend(server.url).generate(thin, PROMPT, SETTINGS)
    assert "spring-rag serve <model>" in str(caught.value) and "nan" not in str(caught.value)
    server = serve(Recording(lambda body: (5, -0.5) if "prompt" in body else (5, -0.75)))  # same token, off by 0.25
    with pytest.raises(ModelMismatchError, match="tolerance 0.1"):
        VLLMBackend(server.url).generate(thin, PROMPT, SETTINGS)
    outside = thin.inputs.output_rows + 100
    with pytest.raises(ModelMismatchError, match=f"has id {outside}, outside this model's vocabulary of "):
        VLLMBackend(serve(Recording(lambda body: (outside, -0.1))).url).generate(thin, PROMPT, SETTINGS)
    assert VLLMBackend(server.url, check_model=False).generate(thin, PROMPT, SETTINGS).text == " ok"


def test_the_thin_client_refuses_what_needs_the_layers_and_says_what_to_load(serve, thin, tmp_path):
    from spring_core.engine import Engine, Request
    from spring_core.parametric.online import ParametricDocument

    with pytest.raises(ThinClientError, match=r"a forward pass .* SpringModel.from_pretrained\(name\)"):
        thin.logits(PROMPT)
    with pytest.raises(ThinClientError, match="needs the model's transformer layers in this process"):
        Engine(thin).generate(Request(prompt=PROMPT, settings={"max_new_tokens": 2}))  # in-process backend
    server = serve(Recording())
    documents = [ParametricDocument(None, text, None) for text in ("X is Y.", "Z is W.")]
    request = Request(question="Who?", documents=documents, decoding="rag-token", settings={"max_new_tokens": 2})
    with pytest.raises(ServerError, match="marginal decoding needs every passage's full next-token distribution"):
        Engine(thin, backend=VLLMBackend(server.url)).generate(request)


def test_the_thin_client_keeps_the_fingerprint_check_of_artifacts(tiny_dir, thin, tmp_path):
    from conftest import make_tiny_model

    other_dir = tmp_path / "other"
    shutil.copytree(tiny_dir, other_dir)
    other = make_tiny_model(other_dir, thin.tokenizer, seed=1)  # the same shapes, other weights
    foreign = tmp_path / "foreign"
    VirtualTokens.from_text(other, n=4, tokenizer=thin.tokenizer).save(foreign)
    with pytest.raises(ModelMismatchError, match=f"{foreign} was made for .* but is being loaded into"):
        thin.with_tokens(foreign)
    assert thin_spring_model(str(other_dir), foreign, pool=None).n == 4  # its own model's thin client takes it
    assert thin.model.get_input_embeddings().weight.shape == (thin.inputs.vocab_rows, thin.inputs.width)


def test_both_integrations_build_a_thin_client_for_a_server_backend(serve, tiny_dir, tiny_tokens, tmp_path):
    from llama_index.core.prompts import PromptTemplate
    from llama_index.llms.spring import SpringLLM

    from langchain_spring import ChatSpring

    recording = Recording()
    server = serve(recording)
    chat = ChatSpring(model=str(tiny_dir), tokens=str(tiny_tokens), backend=server.url, max_tokens=2, api_key="")
    llm = SpringLLM(model_name=str(tiny_dir), tokens=str(tiny_tokens), backend=server.url, max_new_tokens=2,
                    api_key="")
    assert chat.invoke("Where is Paris?").content == " ok"
    template = PromptTemplate("Context:\n{context_str}\n\nQuery: {query_str}\nAnswer:")
    assert llm.predict(template, context_str="Paris is in France.", query_str="Where is Paris?") == " ok"
    assert is_thin(chat.spring.model) and is_thin(llm.spring_model.model)
    assert sum("messages" in body and not body.get("logprobs") for body in recording.bodies) == 1  # the block
    in_process = ChatSpring(model=str(tiny_dir), tokens=str(tiny_tokens), max_tokens=2)
    assert not is_thin(in_process.spring.model)  # no server: the model is loaded as ever
    store = tmp_path / "adapters"
    store.mkdir()
    with pytest.raises(ThinClientError, match=f"adapters='{store}' needs the model's transformer layers"):
        SpringLLM(model_name=str(tiny_dir), backend=server.url, adapters=str(store), api_key="")
    with pytest.raises(ThinClientError, match="adapters="):
        ChatSpring(model=str(tiny_dir), backend=server.url, adapters=str(store), knowledge="prag",
                   api_key="").invoke("Hello")


# ----- served document adapters ------------------------------------------------------------------------------------


def test_a_served_adapter_is_named_by_everything_that_makes_its_update(serve, sm, tmp_path):
    """The merged LoRA a server loads is named by the documents, their adapters and how they combine: two adapter
    sets on one store that merge differently get two, a document whose text changed gets a new one (DyPRAG encodes
    it again), and the same update is loaded once."""
    loaded = []

    def accept(handler, body):
        loaded.append(body["lora_name"])
        handler.reply(200, b'"ok"')

    b = backend(serve(accept))
    spec = LoraSpec.for_model(sm.model, rank=2, alpha=32)
    store = AdapterStore.create(tmp_path / "store", sm.model, spec, base_model_name="tiny")
    store.add({f"doc-{i}": document_tensors(spec, i) for i in range(2)})
    with DocumentAdapters(store, sm.model) as total, DocumentAdapters(store, sm.model, merge="mean") as mean:
        names = [b.adapter_name(sm, adapters, ["doc-0", "doc-1"]) for adapters in (total, mean, total)]
    assert names[0] == names[2] != names[1] and loaded == names[:2]

    dyprag = DyPRAG(ParameterTranslator(DyPRAGConfig.for_model(sm.model, spec, width=8)), sm.model, sm.tokenizer)
    with DyPRAGAdapters(dyprag) as fly:
        fly.remember("doc-0", "Harvard is in Cambridge.")
        before = b.adapter_name(sm, fly, ["doc-0"])
        fly.remember("doc-0", "Yale is in New Haven.")
        assert b.adapter_name(sm, fly, ["doc-0"]) not in (before, *names)
