"""The examples in the docstrings run (doctest), each module's in a scratch folder. ``# doctest: +SKIP`` is kept
only where an example needs a server, a GPU, a big model or a trained artifact that is not bundled; the count of
examples that run is checked, so an example quietly turned into a skipped one shows up here."""

from __future__ import annotations

import doctest
import importlib

import pytest
from doctest_globals import tiny_globals

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# module -> examples expected to run (not skipped)
QUICK = {
    "spring_core": 1,
    "spring_core.artifacts": 1,
    "spring_core.artifacts.manifest": 4,
    "spring_core.data": 3,
    "spring_core.engine.request": 1,
    "spring_core.errors": 2,
    "spring_core.model.healing": 3,
    "spring_core.metrics": 3,
    "spring_core.options": 2,
    "spring_core.retrieval": 5,
    "spring_core.retrieval.bm25": 4,
    "spring_core.prompts.templates": 3,
    "spring_core.types": 4,
    "spring_cli": 2,
    "spring_train.report": 3,
    "spring_train.sharding": 3,
}
# these use a model, tokens, a store...: the tiny random Llama's (tests/doctest_globals.py; outputs that do not
# depend on its random weights: shapes, counts, usage, prompts)
TINY = {
    "spring_core.aio": 4,
    "spring_core.artifacts.registry": 3,
    "spring_core.demo": 4,
    "spring_core.engine.backends": 5,
    "spring_core.engine.dispatch": 6,
    "spring_core.generation": 1,
    "spring_core.generation.marginal": 7,
    "spring_core.generation.runner": 6,
    "spring_core.generation.streaming": 7,
    "spring_core.model.inputs": 7,
    "spring_core.prompts.layouts": 5,
    "spring_core.prompts.placement": 6,
    "spring_core.model.loading": 5,
    "spring_core.parametric.hooks": 6,
    "spring_core.parametric.lora": 11,
    "spring_core.parametric.online": 5,
    "spring_core.parametric.poly": 6,
    "spring_core.parametric.dyprag": 14,
    "spring_core.parametric.store": 7,
    "spring_core.model.spring_model": 5,
    "spring_core.model.tokens": 5,
    "spring_core.serving.peft_export": 4,
    "spring_core.serving.server": 2,
    "spring_core.serving.vllm": 2,
    "langchain_spring": 4,
    "langchain_spring.chains": 5,
    "langchain_spring.chat_models": 9,
    "langchain_spring.llms": 8,
    "langchain_spring.middleware": 11,
    "langchain_spring.retrievers": 7,
    "langchain_spring.tracking": 3,
    "llama_index.llms.spring.base": 12,
    "llama_index.llms.spring.synthesizer": 8,
    "llama_index.llms.spring.query_engine": 6,
    "llama_index.llms.spring.usage": 4,
    "llama_index.retrievers.spring.base": 3,
    "llama_index.postprocessor.spring.base": 5,
    "spring_train.data": 4,
    "spring_train.batching": 5,
    "spring_train.checkpoint": 7,
    "spring_train.adapters": 4,
    "spring_train.augment": 10,
    "spring_train.parametrize": 6,
    "spring_train.dyprag": 7,
    "spring_train.methods": 4,
    "spring_train.evaluate": 5,
    "spring_train.trainer": 5,
}
BM25_STORE = {"langchain_spring.retrievers"}  # these read store/, a BM25 store of the bundled sample corpus
# these use the LangChain pieces of a chain (retriever over store/, prompt, chat, ...: tests/doctest_globals.py)
LANGCHAIN = {name for name in TINY if name.startswith("langchain_spring")} - BM25_STORE
# these use a LlamaIndex index (mock embeddings) and corpus.jsonl
LLAMA_INDEX = {name for name in TINY if name.startswith("llama_index")}
POLY = {"spring_core.parametric.poly"}  # this opens poly/, a Poly-PRAG artifact of random experts
# these use train.jsonl, extra.jsonl and corpus.jsonl (the trainer's examples: 1-2 optimizer steps at most)
TRAINING = {name for name in TINY if name.startswith("spring_train")}
# these load the bundled MiniLM embedder and chromadb (tens of seconds on a busy 2-core machine)
EMBEDDER = {
    "spring_core.retrieval.dense": 4,
    "spring_core.retrieval.embedders": 2,
    "spring_core.retrieval.hybrid": 4,
}


def run_doctests(name: str, globs: dict | None = None) -> tuple[int, int, str]:
    """``(examples run, failures, report)`` for the docstrings of module ``name`` (``globs``: extra names)."""
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    ran, report = 0, []
    for test in doctest.DocTestFinder().find(module, extraglobs=globs or {}):
        ran += sum(1 for example in test.examples if not example.options.get(doctest.SKIP))
        runner.run(test, out=report.append)
    return ran, runner.failures, "".join(report)


def check(name: str, expected: int, tmp_path, monkeypatch, globs: dict | None = None) -> None:
    monkeypatch.chdir(tmp_path)  # examples write their stores and artifacts to relative folders
    ran, failures, report = run_doctests(name, globs)
    assert failures == 0, report
    assert ran == expected, f"{name}: {ran} examples ran, expected {expected} (a new +SKIP, or new examples?)"


@pytest.mark.parametrize(("name", "expected"), QUICK.items(), ids=list(QUICK))
def test_docstring_examples_run(name, expected, tmp_path, monkeypatch):
    check(name, expected, tmp_path, monkeypatch)


@pytest.mark.integration
@pytest.mark.parametrize(("name", "expected"), EMBEDDER.items(), ids=list(EMBEDDER))
def test_docstring_examples_with_the_embedder_run(name, expected, tmp_path, monkeypatch):
    check(name, expected, tmp_path, monkeypatch)


@pytest.mark.parametrize(("name", "expected"), TINY.items(), ids=list(TINY))
def test_docstring_examples_with_the_tiny_model_run(name, expected, tiny_dir, tmp_path, monkeypatch):
    globs = tiny_globals(tiny_dir, tmp_path, bm25_store=name in BM25_STORE, langchain=name in LANGCHAIN,
                         llama_index=name in LLAMA_INDEX, training=name in TRAINING, poly=name in POLY)
    check(name, expected, tmp_path, monkeypatch, globs)
