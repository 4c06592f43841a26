"""Retrieval stores on real parts: the bundled MiniLM embedder, chromadb in a temp folder, bm25s."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys

import pytest

from spring_core.data import read_corpus, sample_corpus_path
from spring_core.errors import DataError, OptionError
from spring_core.retrieval import (
    BM25Store,
    DenseStore,
    Retriever,
    StoreError,
    StoreLockedError,
    create_store,
    index_corpus,
    open_store,
)

QUESTION = "Who is Harvard University named after?"
HARVARD_0 = "squad-Harvard_University-0"  # "... named for John Harvard (its first benefactor) ..."


@pytest.fixture(scope="module")
def corpus():
    rows = read_corpus(sample_corpus_path())
    harvard = [r for r in rows if r["id"].startswith("squad-Harvard_University-")][:6]
    others = [r for r in rows if r["id"].startswith(("squad-Doctor_Who-", "squad-Private_school-"))][:14]
    return harvard + others


@pytest.fixture(scope="module")
def corpus_file(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in corpus))
    return path


@pytest.mark.parametrize("backend", ["dense", "bm25"])
def test_index_retrieve_reopen(backend, corpus_file, corpus, tmp_path):
    store, added = index_corpus(corpus_file, tmp_path / "store", backend=backend, show_progress=False)
    assert added == len(corpus) == len(store)
    assert isinstance(store, Retriever)
    hits = store.retrieve(QUESTION, top_k=3)
    assert hits[0].id == HARVARD_0 and hits[0].title == "Harvard University"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    reopened = open_store(tmp_path / "store")
    assert len(reopened) == len(corpus)
    assert [h.id for h in reopened.retrieve(QUESTION, top_k=3)] == [h.id for h in hits]
    assert reopened.get([HARVARD_0])[0].text.startswith("Established originally")


@pytest.mark.parametrize("backend", ["dense", "bm25"])
def test_rerun_skips_indexed_ids_and_adds_new_ones(backend, corpus_file, corpus, tmp_path):
    half = tmp_path / "half.jsonl"
    half.write_text("".join(json.dumps(r) + "\n" for r in corpus[:8]))
    _, first = index_corpus(half, tmp_path / "store", backend=backend, show_progress=False)
    store, second = index_corpus(corpus_file, tmp_path / "store", backend=backend, show_progress=False)
    assert (first, second, len(store)) == (8, len(corpus) - 8, len(corpus))


@pytest.mark.parametrize("backend", ["dense", "bm25"])
def test_delete_and_metadata(backend, corpus, tmp_path):
    store = create_store(tmp_path / "store", backend)
    store.add([{**corpus[0], "source": "squad", "year": 2016}, *corpus[1:4]])
    hit = store.get([corpus[0]["id"]])[0]
    assert hit.metadata == {"source": "squad", "year": 2016}
    store.delete([corpus[0]["id"]])
    assert len(open_store(tmp_path / "store")) == 3
    assert corpus[0]["id"] not in {h.id for h in open_store(tmp_path / "store").retrieve(QUESTION, top_k=3)}
    with pytest.raises(StoreError, match="unknown passage id"):
        store.get([corpus[0]["id"]])


def test_dense_store_refuses_another_embedder(corpus, tmp_path):
    DenseStore.create(tmp_path / "store").add(corpus[:2])
    with pytest.raises(StoreError, match="'all-minilm-l6-v2', but 'my-other-embedder' was asked for"):
        open_store(tmp_path / "store", embedder="my-other-embedder")
    # the bundled model's public name is an alias of the recorded one
    assert len(open_store(tmp_path / "store", embedder="sentence-transformers/all-MiniLM-L6-v2")) == 2


def test_backend_mixups_are_refused(corpus, tmp_path):
    BM25Store.create(tmp_path / "bm25").add(corpus[:2])
    with pytest.raises(StoreError, match="already holds a bm25 store"):
        create_store(tmp_path / "bm25", "dense")
    with pytest.raises(StoreError, match="uses no embedder"):
        open_store(tmp_path / "bm25", embedder="all-minilm-l6-v2")
    with pytest.raises(StoreError, match="unknown backend"):
        create_store(tmp_path / "x", "faiss")


def test_missing_or_damaged_store(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nowhere")
    (tmp_path / "qa.jsonl").write_text("{}\n")
    with pytest.raises(StoreError, match="is a file, not a store folder"):
        open_store(tmp_path / "qa.jsonl")
    with pytest.raises(StoreError, match="not a spring-rag retrieval store"):
        open_store(tmp_path)
    (tmp_path / "store.json").write_text("{broken")
    with pytest.raises(StoreError, match="not valid JSON"):
        open_store(tmp_path)


def test_a_store_locked_by_another_process_is_refused(corpus, tmp_path):
    store = BM25Store.create(tmp_path / "store")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time; h = open(sys.argv[1], 'a'); fcntl.flock(h, fcntl.LOCK_EX); print('locked', "
         "flush=True); time.sleep(60)", str(tmp_path / "store" / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match="being written by another process"):
            store.add(corpus[:2])
    finally:
        holder.kill()
        holder.wait()
    assert store.add(corpus[:2]) == 2
    with open(tmp_path / "store" / ".lock", "a") as handle:  # the lock was released after the write
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_bm25_index_that_lags_behind_its_passages_is_rebuilt(corpus, tmp_path):
    store = BM25Store.create(tmp_path / "store")
    store.add(corpus[:5])
    with (tmp_path / "store" / "passages.jsonl").open("a") as handle:  # as if cut off before the index swap
        handle.write(json.dumps({"id": corpus[5]["id"], "text": corpus[5]["text"]}) + "\n")
    reopened = BM25Store.open(tmp_path / "store")
    assert len(reopened) == 6 and corpus[5]["id"] in {h.id for h in reopened.retrieve(corpus[5]["text"][:80], top_k=2)}


def test_bad_top_k_and_empty_store(tmp_path):
    store = BM25Store.create(tmp_path / "store")
    assert store.retrieve("anything", top_k=3) == []
    with pytest.raises(OptionError, match="top_k must be an integer >= 1"):
        store.retrieve("anything", top_k=0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "text": ', "corpus.jsonl:2: not valid JSON"),
        ('{"id": "b", "text": "  "}', "corpus.jsonl:2: field 'text' must be a non-empty string"),
        ('{"text": "no id"}', "corpus.jsonl:2: field 'id'"),
        ('{"id": "a", "text": "again"}', "corpus.jsonl:2: id 'a' already used on line 1"),
        ('{"id": "c", "text": "t", "title": 5}', "corpus.jsonl:2: field 'title' must be a string"),
    ],
)
def test_malformed_corpus_is_refused_before_anything_is_indexed(tmp_path, line, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"id": "a", "text": "first"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        index_corpus(path, tmp_path / "store", backend="bm25", show_progress=False)
    assert not (tmp_path / "store").exists()


def test_cli_index_and_search(corpus_file, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "spring_cli", *args], capture_output=True, text=True)

    built = cli("index", str(corpus_file), "--store", str(tmp_path / "s"), "--backend", "bm25")
    assert built.returncode == 0, built.stderr
    assert "added 20 passages" in built.stdout
    found = cli("search", str(tmp_path / "s"), QUESTION, "--top-k", "2")
    assert found.returncode == 0 and found.stdout.startswith("1. [") and HARVARD_0 in found.stdout
    missing = cli("search", str(tmp_path / "absent"), "q")
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr


def test_hybrid_store_fuses_dense_and_bm25_ranks(corpus_file, corpus, tmp_path):
    store, added = index_corpus(corpus_file, tmp_path / "store", backend="hybrid", show_progress=False)
    assert added == len(corpus) == len(store)
    dense, sparse = store.dense.retrieve(QUESTION, top_k=8), store.sparse.retrieve(QUESTION, top_k=8)
    fused = store.retrieve(QUESTION, top_k=3)
    assert fused[0].id == HARVARD_0
    expected = {}
    for ranking in (dense, sparse):
        for rank, hit in enumerate(ranking, start=1):
            expected[hit.id] = expected.get(hit.id, 0.0) + 1 / (60 + rank)
    assert [h.id for h in fused] == sorted(expected, key=lambda i: (-expected[i], i))[:3]
    assert fused[0].score == pytest.approx(expected[HARVARD_0])
    reopened = open_store(tmp_path / "store")
    assert reopened.backend == "hybrid"
    assert [h.id for h in reopened.retrieve(QUESTION, top_k=3)] == [h.id for h in fused]
    store.delete([HARVARD_0])
    assert HARVARD_0 not in {h.id for h in open_store(tmp_path / "store").retrieve(QUESTION, top_k=3)}
