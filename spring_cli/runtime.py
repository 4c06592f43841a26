"""``spring-rag demo | index | search | info | import-spring | serve``: the commands that run a model, a store or
an artifact (nothing here trains), so they need only the runtime, ``spring_core``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from spring_cli.outputs import refuse_existing_output, write_new_folder
from spring_core.model.loading import DEFAULT_MODEL


def add_runtime_parsers(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo", help="answer real questions with and without the virtual-token block, side by side",
        description="Load the model, then answer questions from the bundled SQuAD slice (or --data) twice: "
                    "with k = 0 (exactly the base model) and with the block [r1]..[rk].",
    )
    demo.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default: {DEFAULT_MODEL})")
    demo.add_argument("--tokens", help="artifact folder with trained tokens (default for smollm2-135m: the "
                                       "bundled smollm2-135m-squad tokens; other models: an untrained block "
                                       "initialised from the paper's instruction sentence)")
    demo.add_argument("--k", type=int, help="how many virtual tokens to use, at most the artifact's n (default: "
                                            "50, or n when the artifact has fewer)")
    demo.add_argument("--count", type=int, default=3, help="how many questions, at least 1 (default: 3)")
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
    add_serve_parser(commands)


SERVE_EPILOG = f"""\
what the server gets: --enable-prompt-embeds (the [r1..rk] block travels as embeddings), the model by the name
you gave (--served-model-name), and with --adapters --enable-lora plus run-time loading of the merged document
adapters the clients write. Anything after -- goes to vLLM unchanged, e.g. its own parallelism:

  spring-rag serve my-llama/ --dtype bfloat16 -- --tensor-parallel-size 4
  spring-rag serve my-llama/ -- --pipeline-parallel-size 2 --tensor-parallel-size 4   (8 GPUs)
  spring-rag serve {DEFAULT_MODEL} --port 8001 --adapters                                      (a second, PRAG server)

then point a client at it:  SpringLLM(tokens=..., backend="http://127.0.0.1:8000")
--api-key KEY (or VLLM_API_KEY in the environment, which vLLM reads itself) makes the server refuse requests
without that key; clients send it with api_key=KEY or their own VLLM_API_KEY.
vLLM pins its own torch and transformers: install it in a venv of its own (.venv-vllm; `bash scripts/bootstrap.sh
--serving` makes one) or pass --python. --print-command shows the command instead of running it.
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
    serve.add_argument("--api-key", help="a bearer key every request must carry (default: $VLLM_API_KEY if set, "
                                         "else none); handed to vLLM as its VLLM_API_KEY, out of the process list")
    serve.add_argument("--python", help="the interpreter that has vLLM (default: $SPRING_RAG_VLLM_PYTHON, then "
                                        ".venv-vllm, then this one)")
    serve.add_argument("--print-command", action="store_true", help="print the command instead of running it")


def run_demo(args: argparse.Namespace) -> None:
    from spring_core.demo import run_demo

    run_demo(model=args.model, tokens=args.tokens, k=args.k, count=args.count, data=args.data,
             max_new_tokens=args.max_new_tokens)


def run_index(args: argparse.Namespace) -> None:
    from spring_core.retrieval import index_corpus

    store, added = index_corpus(args.corpus, args.store, backend=args.backend, embedder=args.embedder,
                                batch_size=args.batch_size)
    print(f"{args.store}: added {added} passages, {len(store)} in the store ({store.backend})")


def run_search(args: argparse.Namespace) -> None:
    from spring_core.retrieval import open_store

    for rank, hit in enumerate(open_store(args.store, args.embedder).retrieve(args.query, args.top_k), start=1):
        snippet = hit.text if len(hit.text) <= 160 else hit.text[:157] + "..."
        print(f"{rank}. [{hit.score:.3f}] {hit.id}  {hit.title}\n   {snippet}")


def run_info(args: argparse.Namespace) -> None:
    print(json.dumps(_checked_manifest(args.artifact), indent=2))


def run_import_spring(args: argparse.Namespace) -> None:
    from spring_core.model.tokens import VirtualTokens

    refuse_existing_output(args.out, "--out")
    tokens = VirtualTokens.from_official_pt(args.pt_file, args.model, layout=args.layout)
    write_new_folder(Path(args.out), tokens.save)
    print(f"wrote {args.out}: {tokens.n} tokens x {tokens.hidden_size} for {tokens.base_model_name}")


def run_serve(args: argparse.Namespace) -> None:
    import shlex

    from spring_core.serving import vllm_command, vllm_python

    argv, env = vllm_command(args.model, python=vllm_python(args.python), host=args.host, port=args.port,
                             dtype=args.dtype, adapters=args.adapters, max_lora_rank=args.max_lora_rank,
                             max_loras=args.max_loras, served_model_name=args.served_model_name,
                             api_key=args.api_key, extra=args.extra)
    if args.print_command:
        added = [f"{name}={'<the key given>' if name == 'VLLM_API_KEY' else value}"  # keys stay out of logs
                 for name, value in env.items() if os.environ.get(name) != value]
        print(shlex.join(["env", *added, *argv] if added else argv))
        return
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)  # the server replaces this process, so signals reach vLLM directly


def _checked_manifest(artifact: str) -> dict:
    """Load an artifact of any kind with its checks (every file's SHA-256; token values) and return its manifest."""
    from spring_core.artifacts.manifest import read_manifest, verified_file
    from spring_core.model.tokens import VirtualTokens, resolve_artifact

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
