"""Retrieval quality and speed of the dense (MiniLM + chromadb), BM25 (bm25s) and hybrid stores, side by side.

What is measured: the SQuAD dev questions (``squad/dev.jsonl``, each with its one gold paragraph) against the
combined corpus (``corpus/combined.jsonl``: SQuAD paragraphs, HotpotQA paragraphs and a Wikipedia sample, 3,520
passages). A question is a hit at k when its gold paragraph (matched by exact text) is among the top k.

- index build: passages per second (validation, tokenisation or embedding, and writing the store);
- recall@1 and recall@5 over all questions;
- queries per second, retrieving the top 5 one query at a time (what an app does) and in batches of 64.

The dense and BM25 stores are built from scratch in a temporary folder in the same run; the hybrid store fuses
those two (its build time is theirs added). Target (from the LlamaIndex issue): dense recall@5 >= 0.85.

Run from the repository root, with the shared data folder beside the repository (or pass the paths)::

    python benchmarks/retrieval.py
    python benchmarks/retrieval.py --questions path/to/qa.jsonl --corpus path/to/corpus.jsonl --limit 300
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from spring_core.data import read_corpus, read_qa
from spring_core.retrieval import HybridStore, Store, create_store

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGET_DENSE_RECALL_AT_5 = 0.85


def build(backend: str, rows: list[dict[str, Any]], folder: Path) -> tuple[Store, float]:
    started = time.perf_counter()
    store = create_store(folder / backend, backend)
    store.add(rows, batch_size=64 if backend == "dense" else len(rows))
    return store, time.perf_counter() - started


def recall(store: Store, questions: list[dict[str, Any]], gold_ids: list[str]) -> dict[str, float]:
    results = store.retrieve_batch([q["question"] for q in questions], top_k=5)
    at_1 = sum(gold == hits[0].id for gold, hits in zip(gold_ids, results, strict=True) if hits)
    at_5 = sum(gold in {h.id for h in hits} for gold, hits in zip(gold_ids, results, strict=True))
    return {"recall@1": at_1 / len(questions), "recall@5": at_5 / len(questions)}


def throughput(store: Store, queries: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    for query in queries:
        store.retrieve(query, top_k=5)
    single = len(queries) / (time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, len(queries), 64):
        store.retrieve_batch(queries[start:start + 64], top_k=5)
    batched = len(queries) / (time.perf_counter() - started)
    return {"queries_per_s": single, "queries_per_s_batch64": batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=Path, default=SHARED / "squad" / "dev.jsonl")
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "combined.jsonl")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N questions (0: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "retrieval.json")
    args = parser.parse_args()

    corpus = read_corpus(args.corpus)
    questions = read_qa(args.questions)[: args.limit or None]
    by_text = {row["text"]: row["id"] for row in corpus}
    gold_ids = [by_text.get(q["passages"][0]["text"], "") for q in questions]
    missing = sum(not gold for gold in gold_ids)
    if missing:
        raise SystemExit(f"{missing} questions have a gold paragraph that is not in {args.corpus}")

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        dense, dense_seconds = build("dense", corpus, Path(scratch))
        sparse, sparse_seconds = build("bm25", corpus, Path(scratch))
        hybrid = HybridStore(Path(scratch), dense, sparse)
        timed = [(dense, dense_seconds), (sparse, sparse_seconds), (hybrid, dense_seconds + sparse_seconds)]
        for store, seconds in timed:
            results[store.backend] = {
                "index_passages_per_s": len(corpus) / seconds,
                **recall(store, questions, gold_ids),
                **throughput(store, [q["question"] for q in questions]),
            }

    print(f"\n{len(questions)} questions ({args.questions.name}) against {len(corpus)} passages "
          f"({args.corpus.name}); CPU threads: {torch.get_num_threads()}\n")
    print("| backend | index passages/s | recall@1 | recall@5 | queries/s (1 by 1) | queries/s (batch 64) |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend, row in results.items():
        print(f"| {backend} | {row['index_passages_per_s']:.0f} | {row['recall@1']:.3f} | {row['recall@5']:.3f} "
              f"| {row['queries_per_s']:.1f} | {row['queries_per_s_batch64']:.1f} |")
    met = results["dense"]["recall@5"] >= TARGET_DENSE_RECALL_AT_5
    print(f"\ntarget dense recall@5 >= {TARGET_DENSE_RECALL_AT_5}: {results['dense']['recall@5']:.3f} -> "
          f"{'met' if met else 'NOT met'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "questions": {"file": args.questions.name, "count": len(questions)},
        "corpus": {"file": args.corpus.name, "passages": len(corpus)},
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "results": results,
        "target": {"dense_recall@5": TARGET_DENSE_RECALL_AT_5, "met": met},
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
