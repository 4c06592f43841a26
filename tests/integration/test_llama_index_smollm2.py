"""LlamaIndex end to end on SmolLM2: a chromadb store of the bundled corpus, a query engine, the cookbook recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from llama_index.llms.spring import SpringLLM, spring_query_engine
from llama_index.retrievers.spring import SpringRetriever

from spring_core import SpringModel, VirtualTokens
from spring_core.data import read_corpus, sample_corpus_path

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
QUESTION = "Which Florida city has the biggest population?"


def test_query_engine_over_a_chromadb_store_answers_with_the_block(smollm2, tmp_path, recorder):
    rows = read_corpus(sample_corpus_path())
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows[::4] + rows[1::40]))  # ~60 passages
    retriever = SpringRetriever.from_corpus(corpus, tmp_path / "store", similarity_top_k=2)
    model = SpringModel(*smollm2)
    model = model.with_tokens(VirtualTokens.from_text(model, n=50, layout="chat"))
    llm = SpringLLM(spring_model=model, max_new_tokens=24)
    response = spring_query_engine(retriever, llm, k=20).query(QUESTION)
    assert response.source_nodes[0].node.metadata["title"] == "Jacksonville, Florida"
    assert str(response).strip()
    assert len(recorder.parts) == 1
    parts = recorder.parts[0]
    # chat layout: the template's user turn, wrapped once by LlamaIndex's predict() through completion_to_prompt
    assert parts.k == 20 and parts.after.startswith(f"Question: {QUESTION}<|im_end|>")
    assert parts.before.startswith("<|im_start|>system") and "Jacksonville" in parts.before


def test_cookbook_recipe_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "cookbook" / "llamaindex_query_engine.py"), "--store", str(tmp_path / "store"),
         "--question", QUESTION],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Q: {QUESTION}" in result.stdout
    assert "retrieved: Jacksonville, Florida" in result.stdout
    assert "k = 0   :" in result.stdout and "k = 50  :" in result.stdout
