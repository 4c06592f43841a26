"""One real vLLM server for the whole session: SmolLM2-135M-Instruct on 127.0.0.1, started with ``spring-rag
serve``'s own command builder, with prompt embeddings and run-time LoRA loading (float32, so greedy answers can be
compared with transformers token for token)."""

from __future__ import annotations

import pytest
from vllm_server import start_server, stop_server


@pytest.fixture(scope="session")
def vllm_url(tmp_path_factory):
    process, url = start_server(tmp_path_factory.mktemp("vllm") / "server.log")
    yield url
    stop_server(process)
