"""Real vLLM servers for the whole session, started with ``spring-rag serve``'s own command builder: SmolLM2-135M-
Instruct (float32, so greedy answers can be compared with transformers token for token) with prompt embeddings and
run-time LoRA loading, and a plain one without them. Both start at once, so the second's start overlaps the tests."""

from __future__ import annotations

import pytest
from vllm_server import launch_server, stop_server, wait_for_server


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm")
    servers = {"spring": (*launch_server(folder / "spring.log"), folder / "spring.log")}
    servers["plain"] = (*launch_server(folder / "plain.log", plain=True), folder / "plain.log")
    yield servers
    for process, _url, _log in servers.values():
        stop_server(process)


@pytest.fixture(scope="session")
def vllm_url(vllm_servers):
    return wait_for_server(*vllm_servers["spring"])


@pytest.fixture(scope="session")
def plain_vllm_url(vllm_servers):
    return wait_for_server(*vllm_servers["plain"])
