"""Parametric RAG on SmolLM2-135M-Instruct (CPU): icl vs PRAG vs combine vs Poly-PRAG vs DyPRAG vs combine + SPRING.

What is measured, in one run:

* documents: the gold paragraphs of the first ``--squad`` rows of SQuAD ``dev.jsonl`` and of the first ``--hotpot``
  questions of the HotpotQA distractor sample (its two gold paragraphs each), deduplicated;
* offline cost per document: the paper's LLM augmentation (rewrite + QA JSON) on ``--llm-docs`` of them (seconds
  and how many gave usable JSON), the cloze augmentation (no LLM) on all of them, PRAG encoding and Poly-PRAG
  training (both from the cloze pairs, the only ones a 135M model yields reliably);
* DyPRAG, held apart: the translator learns from the PRAG adapters of ``--dyprag-train`` *other* documents
  (SQuAD train paragraphs and HotpotQA sample paragraphs of articles that none of the benchmark's questions or
  passages come from; cloze pairs, PRAG encoded in this run), then encodes the benchmark's documents, which it never
  saw. Offline seconds: PRAG encoding of the training documents, translator training (per training document) and
  translator encoding (per benchmark document), against PRAG encoding of the same documents; the answer losses of
  the translator's adapters on the training documents and on the unseen ones;
* storage: the PRAG adapter store against the Poly-PRAG experts + routing, total and per document;
* quality: token F1 / EM of each mode on the questions, with the 3 documents BM25 retrieves from the slice
  (greedy, 16 new tokens): ``icl`` (passages only), ``prag`` (adapters only), ``combine`` (both), ``poly``
  (Poly-PRAG's expert mix only), ``dyprag`` / ``dyprag-combine`` (the translator's adapters alone / with the
  passages; several documents' adapters combined by the paper's merge, the default: the average of their ``A`` and
  of their ``B``), the same two with ``merge="sum"`` (summed exactly, as PRAG's are), ``combine+SPRING`` (both plus
  the bundled tokens, k = 50);
* online latency: building and activating the top-3 documents' update against a plain 16-token answer, and one
  forward pass over the answer's prompt with and without that update (the hooks' cost), and DyPRAG's activation of
  the same 3 documents encoded on the fly (nothing stored); medians of ``--repeats``, the variants run in turns.

Run (from the repository root, with the shared data folder beside the repository)::

    python benchmarks/parametric.py                   # writes benchmarks/results/parametric.json
    python benchmarks/parametric.py --squad 4 --hotpot 2 --llm-docs 1 --dyprag-train 4 --repeats 1 --out smoke.json
                                                      # a smoke run (minutes)
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
from spring_core.parametric.dyprag import DyPRAG, DyPRAGAdapters
from spring_core.parametric.hooks import AdapterHooks
from spring_core.parametric.poly import PolyAdapters
from spring_core.retrieval import create_store
from spring_train.augment import augment_corpus, read_augmented
from spring_train.dyprag import DyPRAGSettings, encode_corpus, read_documents, train_dyprag
from spring_train.dyprag import score as translator_scores
from spring_train.parametrize import PolySettings, PragSettings, parametrize, train_poly

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "parametric.json"
MODES = ("icl", "prag", "combine", "poly", "dyprag", "dyprag-combine", "dyprag (sum)", "dyprag-combine (sum)",
         "combine+SPRING")
# the rows the targets compare first, so that a run cut short has them
RUN_ORDER = ("combine", "dyprag-combine", "prag", "dyprag", "icl", "poly", "combine+SPRING", "dyprag (sum)",
             "dyprag-combine (sum)")


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


def training_documents(data: Path, count: int, squad: int, hotpot: int) -> list[dict]:
    """``count`` paragraphs for the DyPRAG translator to learn from, none of an article the benchmark's questions
    (the first ``squad`` SQuAD dev rows, the first ``hotpot`` HotpotQA sample questions) or their passages come
    from: SQuAD *train* paragraphs (one article after another, round robin) and, alternating with them, the
    paragraphs of the later HotpotQA sample questions (gold and distractors alike)."""
    held = {p.get("title", "") for row in read_qa(data / "squad" / "dev.jsonl")[:squad] for p in row["passages"]}
    hotpot_rows = read_qa(data / "hotpotqa" / "dev_distractor_sample100.jsonl")
    held |= {p.get("title", "") for row in hotpot_rows[:hotpot] for p in row["passages"]}
    by_article: dict[str, list[dict]] = {}
    for row in read_qa(data / "squad" / "train.jsonl"):
        passage = row["passages"][0]
        by_article.setdefault(passage.get("title", ""), []).append(passage)
    articles = [rows for title, rows in by_article.items() if title not in held]
    squad_pool = [rows[i] for i in range(max(map(len, articles), default=0)) for rows in articles if i < len(rows)]
    hotpot_pool = [p for row in hotpot_rows[hotpot:] for p in row["passages"] if p.get("title", "") not in held]
    out: dict[str, dict] = {}
    for pair in zip(squad_pool, hotpot_pool, strict=False):
        for passage in pair:
            doc_id = "train-" + hashlib.sha256(passage["text"].encode()).hexdigest()[:12]
            if len(out) < count:
                out.setdefault(doc_id, {"id": doc_id, "title": passage.get("title", ""), "text": passage["text"]})
    if len(out) < count:
        raise SystemExit(f"only {len(out)} training paragraphs outside the benchmark's articles; ask for fewer")
    return list(out.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--squad", type=int, default=30, help="SQuAD questions (default: 30)")
    parser.add_argument("--hotpot", type=int, default=15, help="HotpotQA questions (default: 15)")
    parser.add_argument("--llm-docs", type=int, default=8, help="documents the LLM augments (default: 8)")
    parser.add_argument("--repeats", type=int, default=7, help="latency repeats (default: 7)")
    parser.add_argument("--dyprag-train", type=int, default=40,
                        help="documents the DyPRAG translator learns from, none of the benchmark's articles "
                             "(default: 40; each costs a PRAG encoding and a training step)")
    parser.add_argument("--dyprag-epochs", type=int, default=1, help="translator epochs (default: 1)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    questions, docs = slice_documents(args.data_dir, args.squad, args.hotpot)
    sm = SpringModel.from_pretrained("smollm2-135m", tokens="smollm2-135m-squad")
    report: dict[str, Any] = {"complete": False,
                              "setup": {"model": sm.name, "questions": len(questions), "documents": len(docs),
                                        "retrieved": 3, "max_new_tokens": 16}}

    def save(stage: str) -> None:  # after every stage, so a run cut short leaves what it measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"{time.strftime('%H:%M:%S')} {stage} done", flush=True)

    with tempfile.TemporaryDirectory(prefix="spring-parametric-") as scratch:
        work = Path(scratch)
        report["offline"] = offline(sm, docs, work, args.llm_docs)
        save("offline")
        train_docs = training_documents(args.data_dir, args.dyprag_train, args.squad, args.hotpot)
        report["setup"]["dyprag_training_documents"] = len(train_docs)
        report["offline"]["dyprag"] = offline_dyprag(sm, docs, train_docs, work, args.dyprag_epochs,
                                                  report["offline"]["prag_encode"]["seconds_per_document"],
                                                  report["offline"]["llm_augment"]["seconds_per_document"])
        save("dyprag offline")
        store = DocumentAdapters(AdapterStore.open(work / "prag", model=sm.model), sm.model)
        poly = PolyAdapters.open(work / "poly", sm.model)
        dyprag = DyPRAG.open(work / "translator", sm.model)
        encoded = AdapterStore.open(work / "dyprag", model=sm.model)
        dyprags = {"mean": dyprag.adapters(store=encoded), "sum": dyprag.adapters(store=encoded, merge="sum")}
        report["storage"] = storage(work, len(store.store), poly)
        report["storage"]["dyprag"] = {"translator_bytes": artifact_bytes(work / "translator"),
                                       "translator_parameters": dyprag.translator.num_parameters(),
                                       "encoded_documents": len(encoded),
                                       "encoded_store_bytes": artifact_bytes(work / "dyprag"),
                                       "bytes_per_document_stored": report["storage"]["prag_bytes_per_document"],
                                       "bytes_per_document_on_the_fly": 0}
        retrieval = create_store(work / "bm25", "bm25")
        retrieval.add(docs)
        report["latency"] = latency(sm, store, dyprag, questions, retrieval, args.repeats)
        save("latency")
        report["quality"] = {}
        quality(sm, store, poly, dyprags, questions, retrieval, report["quality"], save)
    report["complete"] = True
    save("all")
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


def offline_dyprag(sm: SpringModel, docs: list[dict], train_docs: list[dict], work: Path, epochs: int,
                   prag_seconds: float, augment_seconds: float) -> dict[str, Any]:
    """Train the translator on ``train_docs`` (their own cloze pairs and PRAG adapters), encode ``docs`` with it;
    ``prag_seconds``: PRAG's encoding seconds per benchmark document in this run (the speed-up's reference);
    ``augment_seconds``: the LLM augmentation's seconds per document in this run, which PRAG needs first."""
    augment_corpus(None, train_docs, work / "train-cloze.jsonl", augmenter="cloze", show_progress=False)
    augmented = read_augmented(work / "train-cloze.jsonl")
    prag = parametrize(sm, augmented, work / "prag-train", PragSettings(), model_name="smollm2-135m",
                       show_progress=False)
    settings = DyPRAGSettings(epochs=epochs)
    trained = train_dyprag(sm, augmented, work / "prag-train", work / "translator", settings,
                           model_name="smollm2-135m", show_progress=False)
    dyprag = DyPRAG.open(work / "translator", sm.model)
    encoded = encode_corpus(dyprag, docs, work / "dyprag", model_name="smollm2-135m", show_progress=False)
    # the answer loss of the benchmark's documents (never seen in training) with the translator's adapters
    benchmark = read_augmented(work / "cloze.jsonl")
    prag_store = AdapterStore.open(work / "prag", model=sm.model)
    pairs = [(doc_id, row) for doc_id, row in benchmark.items() if row.get("status") == "ok" and doc_id in prag_store]
    unseen = read_documents(sm, pairs, prag_store, settings, show_progress=False)
    with AdapterHooks(sm.model, list(dyprag.spec.modules)) as hooks:
        unseen_scores = translator_scores(dyprag, hooks, unseen, [row for _, row in pairs])
    return {
        "training_documents": trained.documents, "epochs": epochs, "settings": settings.record(),
        "prag_encode_training_documents": {"documents": prag.encoded,
                                           "seconds_per_document": round(prag.seconds_per_document, 2)},
        "translator_train": {"steps": trained.steps, "seconds": round(trained.seconds, 1),
                             "seconds_per_training_document": round(trained.seconds / max(1, trained.documents), 2),
                             "epoch_losses": trained.epochs},
        "translator_encode": {"documents": encoded.encoded,
                              "seconds_per_document": round(encoded.seconds_per_document, 4)},
        "encode_speedup_vs_prag": round(prag_seconds / encoded.seconds_per_document, 1)
        if encoded.seconds_per_document else None,
        "encode_speedup_vs_llm_augment_and_prag": round((augment_seconds + prag_seconds)
                                                        / encoded.seconds_per_document, 1)
        if encoded.seconds_per_document else None,
        "answer_loss_training_documents": trained.scores,
        "answer_loss_unseen_documents": unseen_scores,
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


def quality(sm: SpringModel, store: DocumentAdapters, poly: PolyAdapters, dyprags: dict[str, DyPRAGAdapters],
            questions: list[dict], retrieval: Any, results: dict[str, Any], save: Any) -> None:
    """Each mode's scores into ``results`` (in ``MODES`` order), the modes run in ``RUN_ORDER``; ``save`` after each."""
    plain = sm.with_tokens(None)
    setups = {"icl": (plain, store, "icl", 0), "prag": (plain, store, "prag", 0),
              "combine": (plain, store, "combine", 0), "poly": (plain, poly, "prag", 0),
              "dyprag": (plain, dyprags["mean"], "prag", 0), "dyprag-combine": (plain, dyprags["mean"], "combine", 0),
              "dyprag (sum)": (plain, dyprags["sum"], "prag", 0),
              "dyprag-combine (sum)": (plain, dyprags["sum"], "combine", 0),
              "combine+SPRING": (sm, store, "combine", 50)}
    measured: dict[str, Any] = {}
    for mode in RUN_ORDER:
        model, adapters, parametric, k = setups[mode]
        scores: dict[str, list[dict[str, float]]] = {"squad/dev": [], "hotpotqa": []}
        began = time.perf_counter()
        for row in questions:
            docs = retrieved(retrieval, row["question"])  # a document without adapter is read as text (logged)
            out = answer_with_adapters(model, adapters, row["question"], docs, knowledge=parametric, k=k,
                                       missing_adapter="icl", max_new_tokens=16)
            scores[row["dataset"]].append(score(out.text, row["answers"]))
        seconds = (time.perf_counter() - began) / len(questions)
        measured[mode] = {"all": aggregate([s for rows in scores.values() for s in rows]),
                          **{dataset: aggregate(rows) for dataset, rows in scores.items() if rows},
                          "seconds_per_question": round(seconds, 3)}
        results.clear()
        results.update({name: measured[name] for name in MODES if name in measured})
        save(f"{mode} (F1 {measured[mode]['all']['f1']:.2f})")


def latency(sm: SpringModel, store: DocumentAdapters, dyprag: DyPRAG, questions: list[dict], retrieval: Any,
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
        store.clear_cache()
        with store.activate(ids):
            pass

    on_the_fly = dyprag.adapters()  # no store: the documents' adapters are encoded when activated
    on_the_fly.prepare(docs)

    def activate_dyprag_cold() -> None:
        on_the_fly.clear_cache()
        with on_the_fly.activate(ids):
            pass

    prompt_ids = plain.model_inputs([plain.encode(plain.prompt_parts(row["question"], passages, 0))])

    def forward(with_adapters: bool) -> None:
        with torch.inference_mode(), activated(store if with_adapters else None, ids):
            plain.model(**prompt_ids)

    def answer() -> None:
        plain.generate(row["question"], passages, 0, max_new_tokens=16)

    tokens = plain.generate(row["question"], passages, 0, max_new_tokens=16).usage.completion_tokens  # warm-up
    answer_plain, activation, dyprag_activation, forward_plain, forward_adapted = timed(
        answer, activate_cold, activate_dyprag_cold, lambda: forward(False), lambda: forward(True))
    return {"adapters_activated": len(ids), "answer_tokens": tokens,
            "prompt_tokens": int(prompt_ids["input_ids"].shape[1]),
            "plain_answer_s": round(answer_plain, 4), "activate_top3_s": round(activation, 4),
            "activation_vs_answer": round(activation / answer_plain, 4),
            "dyprag_encode_and_activate_top3_s": round(dyprag_activation, 4),
            "dyprag_activation_vs_answer": round(dyprag_activation / answer_plain, 4),
            "prompt_forward_s": round(forward_plain, 4), "prompt_forward_with_top3_s": round(forward_adapted, 4),
            "forward_overhead_with_top3": round(forward_adapted / forward_plain - 1, 4)}


def print_tables(report: dict[str, Any]) -> None:
    print(f"\n{report['setup']}")
    print("\n| mode | F1 | EM | SQuAD F1 | HotpotQA F1 | s/question |\n|---|---:|---:|---:|---:|---:|")
    for mode, result in report["quality"].items():
        print(f"| {mode} | {result['all']['f1']:.1f} | {result['all']['em']:.1f} | {result['squad/dev']['f1']:.1f} | "
              f"{result['hotpotqa']['f1']:.1f} | {result['seconds_per_question']:.2f} |")
    offline, dy = report["offline"], report["offline"]["dyprag"]
    print(f"\noffline s/document: PRAG encoding {offline['prag_encode']['seconds_per_document']:.2f} (benchmark "
          f"documents), {dy['prag_encode_training_documents']['seconds_per_document']:.2f} (translator's training "
          f"documents); translator training {dy['translator_train']['seconds_per_training_document']:.2f} per "
          f"training document ({dy['training_documents']}); translator encoding "
          f"{dy['translator_encode']['seconds_per_document']:.3f} (unseen benchmark documents): "
          f"{dy['encode_speedup_vs_prag']}x faster than PRAG's training, "
          f"{dy['encode_speedup_vs_llm_augment_and_prag']}x than its LLM augmentation and training")
    for name, scores in (("training", dy["answer_loss_training_documents"]),
                         ("unseen", dy["answer_loss_unseen_documents"])):
        print(f"answer loss, {name} documents ({scores['documents']}): no adapter {scores['loss_base']:.3f}, "
              f"PRAG {scores['loss_prag']:.3f}, DyPRAG {scores['loss_dyprag']:.3f}")
    print("\noffline:", json.dumps(report["offline"], indent=1))
    print("storage:", json.dumps(report["storage"], indent=1))
    print("latency:", json.dumps(report["latency"], indent=1))


if __name__ == "__main__":
    main()
