"""Training throughput: our SPRING trainer step against peft's own prompt tuning, side by side in one run.

What is measured (SmolLM2-135M-Instruct, CPU unless a GPU is present, the same dtype for both):

- ``spring (ours)``: one optimizer step of ``spring_train``'s ``SpringTarget``: 50 virtual tokens between the
  passages and the question, logits computed only at the answer positions (``logits_to_keep``), loss summed
  over answer tokens, AdamW on the ``50 x 576`` table.
- ``peft prompt tuning``: ``peft.get_peft_model(model, PromptTuningConfig(num_virtual_tokens=50))`` on the same
  examples (the same prompts without the marker block, 50 virtual tokens prepended by peft), labels ``-100``
  except the answer, the model's own loss over full logits, AdamW on its ``50 x 576`` table.

Both read the same batches: SQuAD questions with their gold paragraph (``--data``, default: the bundled 12-row
demo slice repeated), batch ``--batch-size`` (8), the same left padding. Rounds alternate the two methods in a
shuffled order; each round times one full step (forward, backward, optimizer). Reported: median seconds per
step and real tokens per second (prompt + answer + 50 virtual tokens per example); the ratio is of medians.

Run (from the repository root)::

    python benchmarks/train_speed.py                  # writes benchmarks/results/train_speed.json
    python benchmarks/train_speed.py --precision bf16 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spring_core.data import demo_qa_path, read_qa
from spring_core.model.loading import load_model
from spring_core.model.spring_model import SpringModel
from spring_core.model.tokens import VirtualTokens
from spring_train.batching import IGNORE, Batch, build_example, collate
from spring_train.methods import SpringTarget

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "train_speed.json"
VIRTUAL = 50


def batches(model_name: str, data: str | None, batch_size: int, count: int) -> tuple[Any, Any, list[Batch],
                                                                                      list[Batch]]:
    """The same examples as SPRING batches (block before the question) and plain batches (no block)."""
    model, tokenizer = load_model(model_name, dtype=torch.float32)
    encoder = SpringModel(model, tokenizer, VirtualTokens.from_text(model, n=VIRTUAL, tokenizer=tokenizer))
    rows = read_qa(data or demo_qa_path())
    rows = (rows * (batch_size * count // len(rows) + 1))[: batch_size * count]
    spring, plain = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        for k, out in ((VIRTUAL, spring), (0, plain)):
            examples = [build_example(encoder, question=r["question"], passages=r["passages"][:1],
                                      answer=r["answers"][0], k=k) for r in chunk]
            out.append(collate(examples, encoder.pad_token_id))
    return model, tokenizer, spring, plain


def spring_step(model: Any, tokenizer: Any, autocast: Any) -> Callable[[Batch], float]:
    target = SpringTarget(model, tokenizer, VirtualTokens.from_text(model, n=VIRTUAL, tokenizer=tokenizer))
    optimizer = torch.optim.AdamW([target.tokens.weight], lr=1e-3)

    def step(batch: Batch) -> float:
        with autocast():
            loss = target(batch.input_ids, batch.attention_mask, batch.labels) / batch.answer_tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def peft_step(model: Any, autocast: Any) -> Callable[[Batch], float]:
    from peft import PromptTuningConfig, get_peft_model

    peft_model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)

    def step(batch: Batch) -> float:
        labels = torch.full_like(batch.input_ids, IGNORE)
        width = batch.labels.shape[1]
        labels[:, -width:] = batch.labels
        with autocast():
            loss = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", help="QA JSONL with gold passages (default: the bundled demo slice)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per method (default: 5)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    model, tokenizer, spring_batches, plain_batches = batches(args.model, args.data, args.batch_size, args.rounds)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)

    def autocast() -> Any:
        return torch.autocast(device, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    ours = spring_step(model, tokenizer, autocast)
    # peft wraps the model in place; ours reads the same modules, whose weights peft leaves frozen and unchanged.
    theirs = peft_step(model, autocast)
    methods = {"spring (ours)": (ours, spring_batches, 0), "peft prompt tuning": (theirs, plain_batches, VIRTUAL)}
    for step, data, _ in methods.values():  # warm-up
        step(data[0].to(device))
    times: dict[str, list[float]] = {name: [] for name in methods}
    tokens: dict[str, list[int]] = {name: [] for name in methods}
    rng = random.Random(0)
    for index in range(args.rounds):
        order = list(methods)
        rng.shuffle(order)
        for name in order:
            step, data, extra = methods[name]
            batch = data[index].to(device)
            if device == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            step(batch)
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - began)
            tokens[name].append(batch.real_tokens + extra * batch.input_ids.shape[0])
    rows = []
    for name in methods:
        median = statistics.median(times[name])
        rows.append({"method": name, "median_s_per_step": round(median, 3), "min_s": round(min(times[name]), 3),
                     "tokens_per_step": round(statistics.mean(tokens[name])),
                     "tokens_per_s": round(statistics.mean(tokens[name]) / median, 1)})
    ratio = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    print("| method | s/step (median) | s/step (min) | tokens/step | tokens/s |\n|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['method']} | {row['median_s_per_step']} | {row['min_s']} | {row['tokens_per_step']} | "
              f"{row['tokens_per_s']} |")
    print(f"\nours / peft tokens/s: {ratio:.2f}x (target >= 1.3x) on {device}, {args.precision}, "
          f"batch {args.batch_size}, {args.rounds} rounds")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "config": {"model": args.model, "batch_size": args.batch_size, "rounds": args.rounds,
                   "precision": args.precision, "device": device, "virtual_tokens": VIRTUAL,
                   "data": Path(args.data).name if args.data else "demo_qa.jsonl"},
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "results": rows, "ratio_ours_over_peft": round(ratio, 3),
    }, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
