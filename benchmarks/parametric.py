"""Parametric RAG on SmolLM2-135M-Instruct (CPU): icl vs PRAG vs combine vs Poly-PRAG vs combine + SPRING.

What is measured, in one run:

* documents: the gold paragraphs of the first ``--squad`` rows of SQuAD ``dev.jsonl`` and of the first ``--hotpot``
  questions of the HotpotQA distractor sample (its two gold paragraphs each), deduplicated;
* offline cost per document: the paper's LLM augmentation (rewrite + QA JSON) on ``--llm-docs`` of them (seconds
  and how many gave usable JSON), the cloze augmentation (no LLM) on all of them, PRAG encoding and Poly-PRAG
  training (both from the cloze pairs, the only ones a 135M model yields reliably);
* storage: the PRAG adapter store against the Poly-PRAG experts + routing, total and per document;
* quality: token F1 / EM of each mode on the questions, with the 3 documents BM25 retrieves from the slice
  (greedy, 16 new tokens): ``icl`` (passages only), ``prag`` (adapters only), ``combine`` (both), ``poly``
  (Poly-PRAG's expert mix only), ``combine+SPRING`` (both plus the bundled tokens, k = 50);
* online latency: building and activating the top-3 documents' update against a plain 16-token answer, and one
  forward pass over the answer's prompt with and without that update (the hooks' cost); medians of ``--repeats``,
  the variants run in turns.

Run (from the repository root, with the shared data folder beside the repository)::

    python benchmarks/parametric.py                   # writes benchmarks/results/parametric.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from spring_core import SpringModel
from spring_core.artifacts.manifest import artifact_bytes
from spring_core.data import read_qa
from spring_core.engine import answer_with_adapters
from spring_core.metrics import aggregate, score
from spring_core.parametric import (
    AdapterStore,
    DocumentAdapters,
    ParametricDocument,
    activated,
)
from spring_core.parametric.poly import PolyAdapters
from spring_core.retrieval import create_store
from spring_train.augment import augment_corpus, read_augmented
from spring_train.parametrize import PolySettings, PragSettings, parametrize, train_poly

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "parametric.json"
MODES = ("icl", "prag", "combine", "poly", "combine+SPRING")


def slice_documents(data: Path, squad: int, hotpot: int) -> tuple[list[dict], list[dict]]:
    """The questions and the deduplicated gold paragraphs they are about (corpus rows)."""
    questions, docs = [], {}

    def add(passage: dict) -> str:
        doc_id = "doc-" + hashlib.sha256(passage["text"].encode()).hexdigest()[:12]
        docs.setdefault(doc_id, {"id": doc_id, "title": passage.get("title", ""), "text": passage["text"]})
        return doc_id

    for row in read_qa(data / "squad" / "dev.jsonl")[:squad]:
        questions.append({**row, "dataset": "squad/dev", "gold": [add(row["passages"][0])]})
    gold = {json.loads(line)["id"]: json.loads(line) for line in
            (data / "hotpotqa" / "dev_distractor_sample100.gold.jsonl").read_text().splitlines() if line.strip()}
    for row in read_qa(data / "hotpotqa" / "dev_distractor_sample100.jsonl")[:hotpot]:
        titles = set(gold[row["id"]]["gold_titles"])
        ids = [add(p) for p in row["passages"] if p["title"] in titles]
        questions.append({**row, "dataset": "hotpotqa", "gold": ids})
    return questions, list(docs.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--squad", type=int, default=30, help="SQuAD questions (default: 30)")
    parser.add_argument("--hotpot", type=int, default=15, help="HotpotQA questions (default: 15)")
    parser.add_argument("--llm-docs", type=int, default=8, help="documents the LLM augments (default: 8)")
    parser.add_argument("--repeats", type=int, default=7, help="latency repeats (default: 7)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    questions, docs = slice_documents(args.data_dir, args.squad, args.hotpot)
    sm = SpringModel.from_pretrained("smollm2-135m", tokens="smollm2-135m-squad")
    report: dict[str, Any] = {"setup": {"model": sm.name, "questions": len(questions), "documents": len(docs),
                                        "retrieved": 3, "max_new_tokens": 16}}
    with tempfile.TemporaryDirectory(prefix="spring-parametric-") as scratch:
        work = Path(scratch)
        report["offline"] = offline(sm, docs, work, args.llm_docs)
        store = DocumentAdapters(AdapterStore.open(work / "prag", model=sm.model), sm.model)
        poly = PolyAdapters.open(work / "poly", sm.model)
        report["storage"] = storage(work, len(store.store), poly)
        retrieval = create_store(work / "bm25", "bm25")
        retrieval.add(docs)
        report["quality"] = quality(sm, store, poly, questions, retrieval)
        report["latency"] = latency(sm, store, questions, retrieval, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_tables(report)
    print(f"wrote {args.out}")


def offline(sm: SpringModel, docs: list[dict], work: Path, llm_docs: int) -> dict[str, Any]:
    llm = augment_corpus(sm, docs[:llm_docs], work / "llm.jsonl", max_new_tokens=160, show_progress=False)
    cloze = augment_corpus(None, docs, work / "cloze.jsonl", augmenter="cloze", show_progress=False)
    augmented = read_augmented(work / "cloze.jsonl")
    prag = parametrize(sm, augmented, work / "prag", PragSettings(), model_name="smollm2-135m", show_progress=False)
    began = time.perf_counter()
    poly, poly_report = train_poly(sm, augmented, PolySettings(), show_progress=False)
    poly.save(work / "poly", base_model_name="smollm2-135m")
    poly_seconds = time.perf_counter() - began
    return {
        "llm_augment": {"documents": llm.ok + llm.failed, "usable": llm.ok,
                        "seconds_per_document": round(llm.seconds_per_document, 2),
                        "failures": sorted(set(llm.failures.values()))},
        "cloze_augment": {"documents": cloze.ok + cloze.failed, "usable": cloze.ok,
                          "seconds_per_document": round(cloze.seconds_per_document, 4)},
        "prag_encode": {"documents": prag.encoded, "seconds_per_document": round(prag.seconds_per_document, 2)},
        "poly_train": {"documents": poly_report.encoded,
                       "seconds_per_document": round(poly_seconds / max(1, poly_report.encoded), 2)},
    }


def storage(work: Path, documents: int, poly: PolyAdapters) -> dict[str, Any]:
    prag_bytes, poly_bytes = artifact_bytes(work / "prag"), artifact_bytes(work / "poly")
    per_doc_prag = 4 * poly.spec.rank * sum(o + i for o, i in poly.spec.modules.values())  # float32 A and B
    expert_bytes = poly.num_experts * per_doc_prag  # each expert is one rank-r LoRA
    per_doc_poly = 4 * poly.num_experts  # one float32 routing logit per expert
    # documents at which Poly-PRAG's total is 50x smaller than PRAG's: D * P >= 50 * (E + D * r)
    crossing = None if per_doc_prag <= 50 * per_doc_poly else 50 * expert_bytes / (per_doc_prag - 50 * per_doc_poly)
    return {"documents": documents, "prag_total_bytes": prag_bytes, "poly_total_bytes": poly_bytes,
            "ratio": round(prag_bytes / poly_bytes, 2), "prag_bytes_per_document": per_doc_prag,
            "poly_bytes_per_document": per_doc_poly, "poly_expert_bytes": expert_bytes,
            "documents_for_50x": None if crossing is None else int(crossing) + 1}


def retrieved(retrieval: Any, question: str) -> list[ParametricDocument]:
    return [ParametricDocument(hit.id, hit.as_passage(), hit.score) for hit in retrieval.retrieve(question, 3)]


def quality(sm: SpringModel, store: DocumentAdapters, poly: PolyAdapters, questions: list[dict],
            retrieval: Any) -> dict[str, Any]:
    plain = sm.with_tokens(None)
    setups = {"icl": (plain, store, "icl", 0), "prag": (plain, store, "prag", 0),
              "combine": (plain, store, "combine", 0), "poly": (plain, poly, "prag", 0),
              "combine+SPRING": (sm, store, "combine", 50)}
    results: dict[str, Any] = {}
    for mode in MODES:
        model, adapters, parametric, k = setups[mode]
        scores: dict[str, list[dict[str, float]]] = {"squad/dev": [], "hotpotqa": []}
        began = time.perf_counter()
        for row in questions:
            docs = retrieved(retrieval, row["question"])  # a document without adapter is read as text (logged)
            out = answer_with_adapters(model, adapters, row["question"], docs, knowledge=parametric, k=k,
                                       missing_adapter="icl", max_new_tokens=16)
            scores[row["dataset"]].append(score(out.text, row["answers"]))
        seconds = (time.perf_counter() - began) / len(questions)
        results[mode] = {"all": aggregate([s for rows in scores.values() for s in rows]),
                         **{dataset: aggregate(rows) for dataset, rows in scores.items() if rows},
                         "seconds_per_question": round(seconds, 3)}
    return results


def latency(sm: SpringModel, store: DocumentAdapters, questions: list[dict], retrieval: Any,
            repeats: int) -> dict[str, Any]:
    plain = sm.with_tokens(None)
    # the first question whose 3 retrieved documents all have adapters
    row, docs = next((q, d) for q in questions for d in [retrieved(retrieval, q["question"])]
                     if all(doc.adapter_id in store for doc in d))
    ids = [d.adapter_id for d in docs]
    passages = [d.passage for d in docs]

    def timed(*fns: Any) -> list[float]:
        """Median seconds of each function, run in turns so that drift hits all of them alike."""
        values: list[list[float]] = [[] for _ in fns]
        for _ in range(repeats):
            for index, fn in enumerate(fns):
                began = time.perf_counter()
                fn()
                values[index].append(time.perf_counter() - began)
        return [statistics.median(v) for v in values]

    def activate_cold() -> None:
        store._cache.clear()
        with store.activate(ids):
            pass

    prompt_ids = plain.model_inputs([plain.encode(plain.prompt_parts(row["question"], passages, 0))])

    def forward(with_adapters: bool) -> None:
        with torch.inference_mode(), activated(store if with_adapters else None, ids):
            plain.model(**prompt_ids)

    def answer() -> None:
        plain.generate(row["question"], passages, 0, max_new_tokens=16)

    tokens = plain.generate(row["question"], passages, 0, max_new_tokens=16).usage.completion_tokens  # warm-up
    answer_plain, activation, forward_plain, forward_adapted = timed(
        answer, activate_cold, lambda: forward(False), lambda: forward(True))
    return {"adapters_activated": len(ids), "answer_tokens": tokens,
            "prompt_tokens": int(prompt_ids["input_ids"].shape[1]),
            "plain_answer_s": round(answer_plain, 4), "activate_top3_s": round(activation, 4),
            "activation_vs_answer": round(activation / answer_plain, 4),
            "prompt_forward_s": round(forward_plain, 4), "prompt_forward_with_top3_s": round(forward_adapted, 4),
            "forward_overhead_with_top3": round(forward_adapted / forward_plain - 1, 4)}


def print_tables(report: dict[str, Any]) -> None:
    print(f"\n{report['setup']}")
    print("\n| mode | F1 | EM | SQuAD F1 | HotpotQA F1 | s/question |\n|---|---:|---:|---:|---:|---:|")
    for mode, result in report["quality"].items():
        print(f"| {mode} | {result['all']['f1']:.1f} | {result['all']['em']:.1f} | {result['squad/dev']['f1']:.1f} | "
              f"{result['hotpotqa']['f1']:.1f} | {result['seconds_per_question']:.2f} |")
    print("\noffline:", json.dumps(report["offline"], indent=1))
    print("storage:", json.dumps(report["storage"], indent=1))
    print("latency:", json.dumps(report["latency"], indent=1))


if __name__ == "__main__":
    main()
