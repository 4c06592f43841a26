"""``spring-rag augment`` and ``spring-rag parametrize``: the offline half of Parametric RAG on the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spring_cli.outputs import refuse_existing_output
from spring_core.data import MAX_LINE_BYTES
from spring_core.errors import SpringError
from spring_core.model.loading import DEFAULT_MODEL
from spring_core.parametric.store import mlp_targets

if TYPE_CHECKING:
    from spring_core.model.spring_model import SpringModel
    from spring_train.parametrize import ParametrizeReport

AUGMENT_EPILOG = """\
output: one JSON line per document, {"id", "title", "text", "status": "ok"|"failed", "rewrite", "qa":
[{"question", "answer"}, ...], "attempts", "error", "prompt_version", "augmenter"}. A document whose QA answer is
not usable JSON after --max-attempts is written as failed, with the reason, and counted in the summary.
Re-running skips the ids already in --out (add --retry-failed to try the failed ones again).

Under `accelerate launch --num_processes N -m spring_cli augment ...` each process augments every N-th document
(by position, after --limit) and appends to the one --out file: each chunk of --batch-size documents is one write
under an exclusive lock on the file, so lines never interleave, and a killed process loses only the chunk it was
writing (a rerun redoes it).

examples:
  spring-rag augment corpus.jsonl --out aug.jsonl --limit 100
  spring-rag augment corpus.jsonl --out cloze.jsonl --augmenter cloze     no LLM: fill-in-the-blank pairs
"""

PARAMETRIZE_EPILOG = """\
methods:
  prag   one LoRA per document (rank 2, alpha 32, gate/up/down projections, lr 3e-4, one shared initialisation),
         trained on each QA pair with the passage, with the rewrite and alone; written to an indexed adapter
         store (sharded safetensors). Re-running skips the documents already in the store.
  poly   Poly-PRAG: --experts latent LoRA experts shared by all documents plus one routing vector per document,
         trained jointly. With --add, an existing --out keeps its experts frozen and only the new documents get
         routing vectors.
  dyprag DyPRAG: a parameter translator that reads any document's adapter off the model's hidden state in one
         forward pass, so new documents need no training. It learns from a PRAG store (--store, trained with
         --method prag on the same augmented file): LM loss on each document's QA with the generated adapter
         + --kl-weight * KL(PRAG adapter || generated) + --mse-weight * MSE(generated factors, PRAG's). --out gets
         a translator artifact (open it like a store: adapters="translator/" encodes retrieved documents at query
         time); with --encode CORPUS --translator T, --out gets a PRAG store of T's adapters for every document.
         Training writes checkpoints every --checkpoint-every steps and on Ctrl-C; --resume continues.

Under `accelerate launch --num_processes N -m spring_cli parametrize ...`, prag and dyprag --encode split the
documents between the processes (every N-th, by position), which write into the one --out store; a rerun skips
what is there.

examples:
  spring-rag parametrize aug.jsonl --method prag --out adapters/
  spring-rag parametrize aug.jsonl --method poly --experts 16 --out poly/
  spring-rag parametrize more-aug.jsonl --method poly --out poly/ --add
  spring-rag parametrize aug.jsonl --method dyprag --store adapters/ --out translator/
  spring-rag parametrize --method dyprag --translator translator/ --encode corpus.jsonl --out dyprag-adapters/
"""


def add_parametric_parsers(commands: argparse._SubParsersAction) -> None:
    augment = commands.add_parser(
        "augment", help="PRAG step 1: the LLM writes a rewrite and QA pairs for every corpus document",
        description="For each document of a {\"id\",\"title\",\"text\"} corpus JSONL, the model writes one rewrite "
                    "(keeping entities, names and numbers) and QA pairs as JSON, for `spring-rag parametrize`.",
        epilog=AUGMENT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    augment.add_argument("corpus", help="corpus JSONL file")
    augment.add_argument("--out", required=True, help="augmented JSONL to write: appended to, so a rerun resumes; "
                                                       "an existing file that is not augment output is refused")
    augment.add_argument("--model", default=DEFAULT_MODEL, help=f"the LLM that writes (default: {DEFAULT_MODEL})")
    augment.add_argument("--augmenter", choices=["llm", "cloze"], default="llm",
                         help="llm: the model writes a rewrite and QA pairs (the paper's); cloze: fill-in-the-blank "
                              "pairs from each document's numbers and names, no model and no rewrite (for models "
                              "too small to follow the QA instruction, e.g. 135M). Default: llm")
    augment.add_argument("--limit", type=int, help="augment only the first N documents")
    augment.add_argument("--pairs", type=int, default=3, help="QA pairs per document (default: 3)")
    augment.add_argument("--max-attempts", type=int, default=3, help="tries for usable QA JSON (default: 3)")
    augment.add_argument("--seed", type=int, default=0, help="seed of the sampled retries (default: 0)")
    augment.add_argument("--batch-size", type=int, default=8, help="documents per generate call (default: 8)")
    augment.add_argument("--retry-failed", action="store_true", help="try the documents that failed before again")
    augment.add_argument("--quiet", action="store_true", help="no progress bar")

    encode = commands.add_parser(
        "parametrize", help="PRAG step 2: encode augmented documents as LoRA adapters (prag), routed experts (poly) "
                            "or a translator that makes adapters without training (dyprag)",
        description="Train parametric knowledge from `spring-rag augment` output; the result is used by SpringLLM / "
                    "ChatSpring (adapters=...) and spring_core.parametric.",
        epilog=PARAMETRIZE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    encode.add_argument("augmented", nargs="?", help="augmented JSONL from `spring-rag augment` (not with --encode)")
    encode.add_argument("--out", required=True, help="adapter store (prag, dyprag --encode), expert artifact (poly) "
                                                      "or translator (dyprag) folder: new, or an earlier one of the "
                                                      "same command (resumed; poly with --add); any other non-empty "
                                                      "folder is refused")
    encode.add_argument("--method", choices=["prag", "poly", "dyprag"], default="prag", help="default: prag")
    encode.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default: {DEFAULT_MODEL})")
    encode.add_argument("--rank", type=int, default=2, help="LoRA rank (default: 2)")
    encode.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha (default: 32)")
    encode.add_argument("--lr", type=float, help="learning rate (default: 3e-4; dyprag 1e-4)")
    encode.add_argument("--epochs", type=int, help="passes over each document's examples (default: prag 1, poly 2, "
                                                   "dyprag 1)")
    encode.add_argument("--docs-per-batch", type=int, default=8,
                        help="prag: documents trained side by side, same result as one by one (default: 8)")
    encode.add_argument("--half", action="store_true", help="store the adapters in float16 (half the disk)")
    encode.add_argument("--experts", type=int, default=16, help="poly: latent experts (default: 16)")
    encode.add_argument("--top-experts", type=int, default=4, help="poly: experts a query's mix keeps (default: 4)")
    encode.add_argument("--routing-lr", type=float, default=1e-2, help="poly: routing learning rate (default: 1e-2)")
    encode.add_argument("--batch-size", type=int, default=8, help="poly: examples per step (default: 8)")
    encode.add_argument("--add", action="store_true", help="poly: add new documents to the experts in --out")
    encode.add_argument("--store", help="dyprag: the PRAG store the translator learns from")
    encode.add_argument("--width", type=int, default=32, help="dyprag: hidden width p of each translator head "
                                                              "(default: 32)")
    encode.add_argument("--kl-weight", type=float, default=0.01, help="dyprag: weight of KL(PRAG || generated) "
                                                                      "(default: 0.01)")
    encode.add_argument("--mse-weight", type=float, default=100.0, help="dyprag: weight of the MSE to PRAG's "
                                                                        "factors (default: 100)")
    encode.add_argument("--held-out", type=float, default=0.0, help="dyprag: fraction of the documents kept out of "
                                                                     "training and scored apart, to see how the "
                                                                     "translator does on documents it never saw "
                                                                     "(default: 0)")
    encode.add_argument("--checkpoint-every", type=int, default=50, help="dyprag: steps between checkpoints "
                                                                         "(default: 50)")
    encode.add_argument("--resume", action="store_true", help="dyprag: continue the run whose checkpoints are in --out")
    encode.add_argument("--encode", metavar="CORPUS", help="dyprag: write --translator's adapters for every document "
                                                           "of this corpus JSONL ({id, title, text}) into the store "
                                                           "--out (a rerun skips the documents already there)")
    encode.add_argument("--translator", help="dyprag --encode: the translator folder")
    encode.add_argument("--seed", type=int, default=0, help="seed of the initialisation and order (default: 0)")
    encode.add_argument("--quiet", action="store_true", help="no progress bar")


def _check_augment_output(out: Path, corpus: Path) -> None:
    """``--out`` is appended to (a rerun resumes), so it must be new or earlier augment output, never another file."""
    if out.exists() and (out.is_dir() or out.resolve() == corpus.resolve()):
        raise SpringError(f"--out {out} is {'a folder' if out.is_dir() else 'the corpus itself'}; give a new "
                          "JSONL file (nothing was changed)")
    if not out.is_file() or out.stat().st_size == 0:
        return
    with out.open("rb") as handle:
        first = handle.readline(MAX_LINE_BYTES)
    if not first.endswith(b"\n") and first.startswith(b'{"id": "'):
        return  # a first line still being written by another process, or left half-written by a killed run
    first = first.strip()
    try:
        row = json.loads(first.decode("utf-8")) if first else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        row = None
    if not (isinstance(row, dict) and isinstance(row.get("id"), str) and row.get("status") in ("ok", "failed")):
        raise SpringError(f"--out {out} already exists and is not `spring-rag augment` output; choose a new file "
                          "(nothing was changed)")


def run_augment(args: argparse.Namespace) -> None:
    from spring_core.data import read_corpus
    from spring_core.model.spring_model import SpringModel
    from spring_train.augment import augment_corpus
    from spring_train.sharding import process_share, share

    if args.limit is not None and args.limit < 1:
        raise SpringError("--limit must be at least 1")
    _check_augment_output(Path(args.out), Path(args.corpus))
    process = process_share()  # under `accelerate launch`, each process augments its share into the one --out
    corpus = share(read_corpus(args.corpus)[: args.limit], *process)
    sm = SpringModel.from_pretrained(args.model, device=_process_device(process)) if args.augmenter == "llm" else None
    report = augment_corpus(sm, corpus, args.out, seed=args.seed, pairs=args.pairs, max_attempts=args.max_attempts,
                            batch_size=args.batch_size, retry_failed=args.retry_failed, augmenter=args.augmenter,
                            show_progress=not args.quiet)
    print(f"{args.out}: {report.ok} augmented, {report.failed} failed, {report.skipped} already done "
          f"({report.seconds_per_document:.1f} s/document)")
    for doc_id, reason in list(report.failures.items())[:10]:
        print(f"  failed {doc_id}: {reason}")


def _process_device(process: tuple[int, int]) -> str | None:
    """Under several processes on a machine with GPUs, each process's own GPU (``LOCAL_RANK``); else the default."""
    import os

    import torch

    if process[1] > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', process[0])) % torch.cuda.device_count()}"
    return None


def run_parametrize(args: argparse.Namespace) -> None:
    from spring_core.model.spring_model import SpringModel
    from spring_train import parametrize as encoders
    from spring_train.augment import read_augmented

    _check_method_flags(args)
    if args.method == "dyprag":
        _run_dyprag(args)
        return
    from spring_train.sharding import process_share

    out = Path(args.out)
    process = process_share()  # under `accelerate launch`, each process encodes its share into one store
    if process[1] > 1 and args.method == "poly":
        raise SpringError("--method poly trains its experts jointly over all documents; run it as one process "
                          "(prag and dyprag --encode shard over processes)")
    if process[1] == 1 and not (out / "spring.json").exists():  # a store resumes; any other folder is refused
        refuse_existing_output(out, "--out")
    augmented = read_augmented(args.augmented)
    if not augmented:
        raise SpringError(f"{args.augmented} holds no augmented documents; run `spring-rag augment` first")
    sm = SpringModel.from_pretrained(args.model, device=_process_device(process))
    dtype = "float16" if args.half else "float32"
    if args.method == "prag":
        settings = encoders.PragSettings(rank=args.rank, alpha=args.alpha, lr=_lr(args, 3e-4), epochs=args.epochs or 1,
                                         docs_per_batch=args.docs_per_batch, seed=args.seed, storage_dtype=dtype)
        report = encoders.parametrize(sm, augmented, args.out, settings, model_name=args.model, process=process,
                                      show_progress=not args.quiet)
    else:
        report = _run_poly(args, sm, augmented, dtype)
    print(f"{args.out}: {report.encoded} documents encoded ({report.seconds_per_document:.1f} s/document), "
          f"{report.skipped} already there, {len(report.not_augmented)} without usable augmentation")


def _run_poly(args: argparse.Namespace, sm: SpringModel, augmented: dict[str, dict[str, Any]],
              dtype: str) -> ParametrizeReport:
    from dataclasses import asdict

    from spring_core.parametric.poly import PolyAdapters
    from spring_train import parametrize as encoders

    settings = encoders.PolySettings(experts=args.experts, top_experts=args.top_experts, rank=args.rank,
                                     alpha=args.alpha, lr=_lr(args, 3e-4), routing_lr=args.routing_lr,
                                     epochs=args.epochs or 2, batch_size=args.batch_size, seed=args.seed,
                                     storage_dtype=dtype)
    out = Path(args.out)
    exists = (out / "spring.json").exists()
    if args.add:
        if not exists:
            raise SpringError(f"--add needs an existing expert folder in --out; {out} has none (drop --add)")
        poly = PolyAdapters.open(out, sm.model, model_name=args.model)
        report = encoders.add_poly_documents(sm, poly, augmented, settings, show_progress=not args.quiet)
        manifest = poly.manifest
    else:
        if exists:
            raise SpringError(f"{out} already holds experts; pass --add to route new documents through them, or "
                              "pick a new --out")
        poly, report = encoders.train_poly(sm, augmented, settings, show_progress=not args.quiet)
        targets = list(settings.targets or mlp_targets(sm.model))
        manifest = {"encoding": {"method": "poly", "settings": {**asdict(settings), "targets": targets}}}
    poly.save(out, base_model_name=args.model, encoding=manifest.get("encoding"))
    return report


def _check_method_flags(args: argparse.Namespace) -> None:
    """Refuse flag combinations that would be silently ignored, naming what to do instead."""
    if args.method != "dyprag":
        used = [flag for flag, value in (("--store", args.store), ("--encode", args.encode),
                                         ("--translator", args.translator), ("--resume", args.resume)) if value]
        if used:
            raise SpringError(f"{used[0]} belongs to --method dyprag; drop it or pass --method dyprag")
        if args.augmented is None:
            raise SpringError("parametrize needs the augmented JSONL from `spring-rag augment` as its first argument")
        return
    if args.encode is not None:
        if args.translator is None:
            raise SpringError("--encode needs --translator FOLDER (a translator from `parametrize --method dyprag`)")
        if args.augmented is not None or args.store is not None or args.resume:
            raise SpringError("--encode reads only the corpus and the translator; drop the augmented file, --store "
                              "and --resume (train the translator in a separate run)")
        return
    if args.augmented is None or args.store is None:
        raise SpringError("--method dyprag trains from an augmented JSONL and its PRAG store: pass AUGMENTED and "
                          "--store STORE (or --encode CORPUS --translator T to encode with a trained translator)")
    if args.translator is not None:
        raise SpringError("--translator is for --encode; training writes its translator to --out")


def _run_dyprag(args: argparse.Namespace) -> None:
    from spring_core.model.spring_model import SpringModel

    out = Path(args.out)
    if args.encode is not None:
        from spring_core.data import read_corpus
        from spring_core.parametric.dyprag import DyPRAG
        from spring_train.dyprag import encode_corpus
        from spring_train.sharding import process_share

        process = process_share()  # under `accelerate launch`, each process encodes its share into one store
        if process[1] == 1 and not (out / "spring.json").exists():
            refuse_existing_output(out, "--out")
        corpus = read_corpus(args.encode)
        sm = SpringModel.from_pretrained(args.model, device=_process_device(process))
        dyprag = DyPRAG.open(args.translator, sm.model, model_name=args.model)
        encoded = encode_corpus(dyprag, corpus, out, model_name=args.model, process=process,
                                show_progress=not args.quiet)
        print(f"{args.out}: {encoded.encoded} documents encoded ({encoded.seconds_per_document:.3f} s/document), "
              f"{encoded.skipped} already there")
        return
    from spring_train.augment import read_augmented
    from spring_train.checkpoint import check_output_folder
    from spring_train.dyprag import DyPRAGSettings, train_dyprag

    check_output_folder(out, args.resume, run="DyPRAG run")
    settings = DyPRAGSettings(width=args.width, lr=_lr(args, 1e-4), epochs=args.epochs or 1,
                              kl_weight=args.kl_weight, mse_weight=args.mse_weight, seed=args.seed,
                              held_out=args.held_out, checkpoint_every=args.checkpoint_every)
    augmented = read_augmented(args.augmented)
    sm = SpringModel.from_pretrained(args.model)
    report = train_dyprag(sm, augmented, args.store, out, settings, model_name=args.model, resume=args.resume,
                          show_progress=not args.quiet)
    scores = report.scores
    print(f"{args.out}: translator trained on {report.documents} documents ({report.steps} steps, "
          f"{report.seconds:.1f} s); answer loss: no adapter {scores['loss_base']:.3f}, PRAG "
          f"{scores['loss_prag']:.3f}, DyPRAG {scores['loss_dyprag']:.3f}; encoding "
          f"{scores['encode_seconds_per_document']:.3f} s/document; {len(report.without_adapter)} documents "
          f"without a PRAG adapter, {len(report.not_augmented)} without usable augmentation")
    held = scores.get("held_out")
    if held:
        print(f"  held out ({held['documents']} documents never trained on): answer loss no adapter "
              f"{held['loss_base']:.3f}, PRAG {held['loss_prag']:.3f}, DyPRAG {held['loss_dyprag']:.3f}")


def _lr(args: argparse.Namespace, default: float) -> float:
    """``--lr`` when given, else the method's default."""
    return default if args.lr is None else float(args.lr)
