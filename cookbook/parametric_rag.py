"""Recipe: Parametric RAG end to end — corpus -> augment -> parametrize -> ask with icl, prag and combine.

What it shows: documents turned into small LoRA adapters offline, then each question answered four ways: the
passages in the prompt (icl), the retrieved documents' adapters only (prag), both (combine), and both plus the
bundled trained SPRING tokens (combine + SPRING, k=50 of ``smollm2-135m-squad``).
What to expect: it takes a few minutes on a CPU (~5 s to encode each document). icl answers in sentences; the
adapters and the tokens push the answers towards a few words (token F1 on 45 questions: icl 2.4, prag 6.1,
combine 17.5, combine + SPRING 33.8; see the parametric RAG guide in docs/). With 2 topics and 1 epoch, expect
the shorter answers rather than always the right ones.

1. Take the bundled SQuAD paragraphs about a few topics as the corpus and index them with BM25.
2. Augment every document: ``--augmenter cloze`` (default) blanks out its numbers and names, no LLM needed;
   ``--augmenter llm`` asks the model for a rewrite and QA pairs as in the paper (a 135M model rarely manages the
   JSON, which the summary line shows).
3. Parametrize: one rank-2 LoRA per document (PRAG) in an adapter store.
4. Ask the bundled questions about those topics three ways: the passages in the prompt (icl), the retrieved
   documents' adapters only (prag), both (combine), and both with the bundled tokens' block (combine+SPRING;
   ``--tokens none`` leaves it out). The adapters are active for each call only; the base weights never change.

Run:
    python cookbook/parametric_rag.py                          # 2 topics, 2 questions, cloze augmentation
    python cookbook/parametric_rag.py --augmenter llm --lr 1e-3 --epochs 3 --out my-parametric/
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from spring_core import SpringModel
from spring_core.data import demo_qa_path, read_corpus, read_qa, sample_corpus_path
from spring_core.engine import answer_with_adapters
from spring_core.parametric import ParametricDocument, open_adapters
from spring_core.retrieval import create_store
from spring_train.augment import augment_corpus, read_augmented
from spring_train.parametrize import PragSettings, parametrize

TOPICS = ("Harvard University", "Doctor Who", "Jacksonville, Florida", "University of Chicago")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="base model (alias, folder or HF id)")
    parser.add_argument("--topics", type=int, default=2, help=f"how many of {len(TOPICS)} topics (default: 2)")
    parser.add_argument("--docs-per-topic", type=int, default=3, help="paragraphs per topic (default: 3)")
    parser.add_argument("--questions", type=int, default=2, help="bundled questions to ask (default: 2)")
    parser.add_argument("--augmenter", choices=["cloze", "llm"], default="cloze", help="default: cloze")
    parser.add_argument("--lr", type=float, default=3e-4, help="PRAG learning rate (default: 3e-4, the paper's)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over each document's pairs (default: 1)")
    parser.add_argument("--max-tokens", type=int, default=16, help="most new tokens per answer (default: 16)")
    parser.add_argument("--out", type=Path, help="keep the augmented file and the adapter store here")
    parser.add_argument("--tokens", default="smollm2-135m-squad",
                        help="SPRING tokens for combine+SPRING (default: the bundled smollm2-135m-squad, trained "
                             "for the default model); 'none': leave that mode out")
    parser.add_argument("--k", type=int, default=50, help="virtual tokens in combine+SPRING's block (default: 50)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    topics = TOPICS[: args.topics]
    corpus = []
    for topic in topics:
        corpus += [row for row in read_corpus(sample_corpus_path()) if row["title"] == topic][: args.docs_per_topic]
    questions = [row for row in read_qa(demo_qa_path()) if row["passages"][0]["title"] in topics][: args.questions]

    with tempfile.TemporaryDirectory(prefix="spring-parametric-") as scratch:
        work = args.out or Path(scratch)
        sm = SpringModel.from_pretrained(args.model)
        report = augment_corpus(sm if args.augmenter == "llm" else None, corpus, work / "augmented.jsonl",
                                augmenter=args.augmenter, show_progress=False)
        print(f"augmented {report.ok} of {len(corpus)} documents ({args.augmenter}; {report.failed} failed)")
        encoded = parametrize(sm, read_augmented(work / "augmented.jsonl"), work / "adapters",
                              PragSettings(lr=args.lr, epochs=args.epochs), model_name=args.model,
                              show_progress=False)
        print(f"encoded {encoded.encoded} adapters ({encoded.seconds_per_document:.1f} s/document)")
        adapters = open_adapters(work / "adapters", sm.model, model_name=args.model)
        with_tokens = None if args.tokens.lower() == "none" else sm.with_tokens(args.tokens)  # same weights
        bm25 = create_store(work / "bm25", "bm25")
        bm25.add(corpus)

        for row in questions:
            hits = bm25.retrieve(row["question"], 2)
            documents = [ParametricDocument(hit.id, hit.as_passage(), hit.score) for hit in hits]
            print(f"\nQ: {row['question']}   (gold: {row['answers'][0]}; retrieved: {[hit.id for hit in hits]})")
            for mode in ("icl", "prag", "combine"):
                out = answer_with_adapters(sm, adapters, row["question"], documents, knowledge=mode, k=0,
                                           missing_adapter="icl", max_new_tokens=args.max_tokens)
                print(f"  {mode:>14}: {out.text.strip()!r}")
            if with_tokens is not None:  # the same adapters, and the block between the passages and the question
                out = answer_with_adapters(with_tokens, adapters, row["question"], documents, knowledge="combine",
                                           k=args.k, missing_adapter="icl", max_new_tokens=args.max_tokens)
                print(f"  {'combine+SPRING':>14}: {out.text.strip()!r}")


if __name__ == "__main__":
    main()
