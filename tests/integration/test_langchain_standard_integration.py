"""LangChain's standard integration tests: ``ChatSpring`` on SmolLM2, ``SpringRetriever`` on real stores.

Wired as partner packages do (subclass, model class, params, capability flags). The chat model is built by
name, as users do (``ChatSpring(model="smollm2-135m")``); answers are capped at 16 tokens to keep the suite fast.
Async tests run on anyio's pytest plugin with the asyncio backend. The retriever suites run over a dense (MiniLM +
chromadb) and a BM25 store of 40 bundled SQuAD paragraphs, built once per module in a temp folder.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_capabilities import ChatSpringCapabilities
from langchain_tests.integration_tests import ChatModelIntegrationTests, RetrieversIntegrationTests

from langchain_spring import ChatSpring, SpringRetriever
from spring_core.data import read_corpus, sample_corpus_path
from spring_core.retrieval import create_store

# The suites' async tests run on anyio's pytest plugin (the project runs pytest-asyncio in strict mode).
pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class TestChatSpringIntegration(ChatSpringCapabilities, ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatSpring]:
        return ChatSpring

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "smollm2-135m", "max_tokens": 16}



@pytest.fixture(scope="module")
def store_folders(tmp_path_factory) -> dict[str, str]:
    rows = read_corpus(sample_corpus_path())[:40]
    folders = {}
    for backend in ("dense", "bm25"):
        folder = tmp_path_factory.mktemp(f"lc-{backend}-store")
        create_store(folder, backend).add(rows)
        folders[backend] = str(folder)
    return folders


class _StoreRetrieverTests(RetrieversIntegrationTests):
    backend = ""
    folder = ""

    @pytest.fixture(autouse=True)
    def _use_store(self, store_folders) -> None:
        type(self).folder = store_folders[self.backend]

    @property
    def retriever_constructor(self) -> type[SpringRetriever]:
        return SpringRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"store": self.folder, "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "Along with sport and art, what is a type of talent scholarship?"


class TestSpringRetrieverDense(_StoreRetrieverTests):
    backend = "dense"


class TestSpringRetrieverBM25(_StoreRetrieverTests):
    backend = "bm25"
