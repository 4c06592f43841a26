"""Start and stop a real vLLM server on 127.0.0.1 for the tests (SmolLM2-135M-Instruct or Gemma 3 270M, float32),
with the command ``spring-rag serve`` builds, optionally with an API key."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from spring_core.serving import vllm_command, vllm_python

START_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_server(log: Path, *, model: str = "smollm2-135m", plain: bool = False, adapters: bool = True,
                  api_key: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server in the background and return it with its URL; ``plain``: without the flags spring-rag needs
    (no prompt embeddings, no LoRA), as a user might start one by hand; ``api_key``: the key it demands."""
    port = free_port()
    extra = ("--max-model-len", "2048", "--distributed-executor-backend", "uni")
    adapters = adapters and not plain
    argv, env = vllm_command(model, python=vllm_python(), port=port, dtype="float32", adapters=adapters,
                             max_lora_rank=16, api_key=api_key, extra=extra)
    if api_key is None:
        env.pop("VLLM_API_KEY", None)  # a key only where a test asks for one
    if plain:
        argv.remove("--enable-prompt-embeds")
        argv.remove("--trust-request-chat-template")
    if not adapters:
        # vLLM's CPU build runs a LoRA-enabled model eager but torch.compiles any other (minutes on 2 cores, with
        # no cache on a fresh machine); these tests need no compiled model.
        argv.append("--enforce-eager")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache: plenty for 2048 tokens x 32 requests
    # The model runs inside the engine process instead of a worker process of its own: one interpreter fewer to
    # start (a third faster to come up on 2 cores), the same single-threaded model run.
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{port}"


def wait_for_server(process: subprocess.Popen, url: str, log: Path, api_key: str | None = None) -> str:
    """``url`` once the server answers; raises with the end of its log when it exits or does not come up."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            if httpx.get(url + "/v1/models", headers=headers, timeout=5).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        time.sleep(1)
    stop_server(process)
    raise RuntimeError(f"the vLLM server did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def running_server(log: Path, **options) -> Iterator[str]:
    """A started server's URL, once it answers; the server is stopped on leaving (``options``: see
    ``launch_server``)."""
    process, url = launch_server(log, **options)
    try:
        yield wait_for_server(process, url, log, options.get("api_key"))
    finally:
        stop_server(process)
