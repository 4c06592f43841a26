"""Answer quality of SmolLM2-135M-Instruct: the paper's baselines, SPRING at k = 1..50, LoRA and SPRING+ in one run.

What is measured: the first 300 rows of SQuAD ``dev.jsonl`` and the 100-question HotpotQA distractor sample, each
question with the 2 passages BM25 retrieves from ``corpus/combined.jsonl`` (3,520 passages: every SQuAD paragraph,
the HotpotQA sample's paragraphs and 1,000 Wikipedia distractors). Greedy decoding, 16 new tokens. Methods:
closed-book, Concat, Prompt, Prompt-chat, SPRING at k = 1, 5, 10, 25, 50, LoRA, LoRA without retrieval, SPRING+ at
k = 50. EM / F1 / Acc on the whole prediction, and the same on its first line.

It is ``spring-rag eval`` with these settings; predictions are kept in ``--out`` so an interrupted run resumes.
The committed ``benchmarks/results/quality/`` holds the full sweep (k = 1, 5, 10, 25, 50): about 5 minutes per
method and k for the 400 questions on a 2-core CPU. It was filled by several runs of this command: each run takes
from the saved predictions every answer whose model, artifact files and passages are unchanged.

Run (from the repository root, with the shared data folder beside the repository, or pass ``--data-dir``)::

    python benchmarks/quality.py --tokens spring_core/resources/tokens/smollm2-135m-squad \\
        --lora runs/lora --spring-plus runs/spring-plus
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spring_cli import main as cli_main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quality"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--tokens", required=True, help="SPRING artifact")
    parser.add_argument("--lora", help="LoRA artifact (adds LoRA and LoRA without retrieval)")
    parser.add_argument("--spring-plus", help="SPRING+ artifact")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--k", default="1,5,10,25,50")
    parser.add_argument("--plus-k", default="50", help="k values for SPRING+ (default: 50, the paper's)")
    parser.add_argument("--passages", default="2", help="retrieved passages per question (default: 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    methods = ["closed-book", "concat", "prompt", "prompt-chat", "spring"]
    extra = []
    if args.lora:
        methods += ["lora", "lora:closed-book"]
        extra += ["--lora", args.lora]
    if args.spring_plus:
        methods.append("spring+")
        extra += ["--spring-plus", args.spring_plus]
    return cli_main([
        "eval",
        "--data", str(args.data_dir / "squad" / "dev.jsonl"),
        "--data", str(args.data_dir / "hotpotqa" / "dev_distractor_sample100.jsonl"),
        "--limit", str(args.limit), "--corpus", str(args.data_dir / "corpus" / "combined.jsonl"),
        "--passages", args.passages, "--methods", ",".join(methods), "--tokens", args.tokens, "--k", args.k,
        "--plus-k", args.plus_k,
        "--out", str(args.out), "--record-metrics", *extra,
    ])


if __name__ == "__main__":
    sys.exit(main())
