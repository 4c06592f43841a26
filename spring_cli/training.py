"""``spring-rag train | eval``: train virtual tokens (or a baseline) into an artifact, and score methods with
EM / F1 against the paper's baselines. These need the trainer, ``spring_train``."""

from __future__ import annotations

import argparse

from spring_core.model.loading import DEFAULT_MODEL
from spring_core.prompts.templates import TEMPLATE_SETS

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
faster with --lr 1e-3 (see the training guide, docs/training.md). Ctrl-C saves a checkpoint; --resume continues it.
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
                            "defaults, rlm/rag-prompt, paraphrases), the block placed as the integrations place it; "
                            "chat: only the chat ones (SPRING's chat layout, LangChain's RAG tutorial, rlm/rag-prompt "
                            "as LangGraph's tutorial sends it)")
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

parametric knowledge (Parametric RAG): --knowledge icl,prag,combine evaluates concat and spring once per mode
  icl      the passages in the prompt (the default; what every method does without --knowledge)
  prag     the question alone in the prompt, the passages' document adapters from --adapters applied
  combine  both (spring + combine: combine + SPRING at every --k)
  --adapters is a PRAG store or Poly-PRAG experts (`spring-rag parametrize`), or a DyPRAG translator folder, which
  encodes every passage on the fly. A passage's adapter id is its corpus id when retrieved (--corpus/--store), else
  the "id" of a row's own passage. A passage the store has no adapter for stops the run before any answer with
  adapters, unless --missing-adapter icl reads it as text. Other methods run as without --knowledge.

outputs in --out: predictions.jsonl (one line per question and method; a rerun resumes), results.json,
results.md (per-dataset and average EM / F1 / Acc, first-line scores, seconds per question) and em_f1_vs_k.png.

examples:
  spring-rag eval --data dev.jsonl --limit 300 --corpus corpus.jsonl --passages 3 \\
      --methods closed-book,concat,prompt,prompt-chat,spring --tokens my-tokens --k 1,5,10,25,50 --out eval/
  spring-rag eval --data dev.jsonl --corpus corpus.jsonl --methods closed-book,concat \\
      --knowledge icl,prag,combine --adapters adapters/ --out eval-prag/
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
    ev.add_argument("--knowledge", default="icl",
                    help="comma-separated knowledge modes for concat and spring: icl (default; passages in the "
                         "prompt), prag (their document adapters only), combine (both); prag and combine need "
                         "--adapters")
    ev.add_argument("--adapters", metavar="DIR",
                    help="the documents' adapters for --knowledge prag/combine: a PRAG store, Poly-PRAG experts or a "
                         "DyPRAG translator (from `spring-rag parametrize`)")
    ev.add_argument("--missing-adapter", choices=["error", "icl"], default="error",
                    help="a passage the --adapters store has no adapter for: error (default; the run stops before "
                         "it starts, naming them) or icl (its text goes into the prompt instead)")
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


def run_eval(args: argparse.Namespace) -> None:
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
                    decodings=[m.strip() for m in args.decoding.split(",") if m.strip()],
                    knowledge=[m.strip() for m in args.knowledge.split(",") if m.strip()], adapters=args.adapters,
                    missing_adapter=args.missing_adapter)
    out = Path(args.out)
    datasets = load_datasets(args.data, limit=args.limit, passages=args.passages, corpus=args.corpus,
                             store=args.store, retriever=args.retriever, cache_dir=out / "cache",
                             own_passages=args.own_passages)
    results = evaluate(plan, datasets, out)
    config = {key: value for key, value in vars(args).items() if key != "command"}
    for key in ("data", "out", "corpus", "store", "own_passages", "tokens", "lora", "prefix", "spring_plus",
                "adapters"):
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


def run_train(args: argparse.Namespace) -> None:
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
