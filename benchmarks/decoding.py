"""Decodings side by side: stuff vs RAG-Token vs RAG-Sequence (thorough and fast), with and without SPRING.

What is measured: SmolLM2-135M-Instruct, greedy, 16 new tokens, on

* the 100-question HotpotQA distractor sample with each row's own 10 paragraphs (2 gold + 8 distractors, no
  retriever scores, so the passages weigh the same), and
* the first 300 rows of SQuAD ``dev.jsonl`` with the 2 passages BM25 retrieves from ``corpus/combined.jsonl``
  (their BM25 scores give the passage weights ``p(z|x)``),

each answered by Concat (no tokens) and by the bundled SPRING tokens at k = 50, in the four ``--decoding`` values. EM /
F1 / Acc and seconds per question go to ``benchmarks/results/decoding/results.{json,md}``. The committed results
were measured with the bundled tokens' 200-step first stage (its ``REPRODUCE.md`` gives that version's SHA-256).

It is ``spring-rag eval`` with these settings; predictions are kept in ``--out`` so an interrupted run resumes.
The full run takes about two and a half hours on a 2-core CPU, because the marginal modes answer one question at
a time. Seconds per question only mean something when nothing else runs on the machine: the README's speed
column comes from a separate quiet run over the first 20 questions of each dataset, in
``benchmarks/results/decoding-quiet/`` (``--limit 20 --out benchmarks/results/decoding-quiet``).

Run (from the repository root, with the shared data folder beside the repository, or pass ``--data-dir``)::

    python benchmarks/decoding.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spring_cli import main as cli_main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "decoding"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--tokens", default="smollm2-135m-squad", help="SPRING artifact (default: the bundled one)")
    parser.add_argument("--k", default="50", help="virtual tokens per passage (default: 50)")
    parser.add_argument("--limit", type=int, default=300, help="rows per dataset (default: 300)")
    parser.add_argument("--passages", default="2", help="passages BM25 retrieves for SQuAD (default: 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    hotpot = str(args.data_dir / "hotpotqa" / "dev_distractor_sample100.jsonl")
    return cli_main([
        "eval",
        "--data", hotpot, "--own-passages", hotpot,
        "--data", str(args.data_dir / "squad" / "dev.jsonl"),
        "--corpus", str(args.data_dir / "corpus" / "combined.jsonl"), "--passages", args.passages,
        "--limit", str(args.limit), "--methods", "concat,spring", "--tokens", args.tokens, "--k", args.k,
        "--decoding", "stuff,rag-token,rag-sequence,rag-sequence-fast", "--out", str(args.out),
    ])


if __name__ == "__main__":
    sys.exit(main())
