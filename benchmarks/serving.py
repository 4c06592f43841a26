"""Serving throughput: the in-process transformers backend against a vLLM server, and SPRING's block through vLLM
against a plain prompt of the same length, side by side in one run.

What is measured (SmolLM2-135M-Instruct, float32, greedy, exactly ``--new-tokens`` (16) new tokens
(``min_new_tokens``: the end of sequence is ignored until then, so every configuration decodes as much), raw
layout, SQuAD questions of the bundled demo slice with their passages):

- ``hf``: ``Engine(spring)`` in this process; concurrent requests are threads sharing the one model.
- ``vllm``: ``Engine(spring, backend=VLLMBackend(url))``: the same prompts, the block sent as ``prompt_embeds``.
- at 1, 8 and 32 concurrent requests (``--concurrency``), each configuration sends ``--requests`` requests
  (default: 2 x the concurrency, at least 8) through a pool of that many workers, streaming, and records
  requests/s (requests / wall time) and the median time to the first streamed delta.
- ``vllm plain``: through vLLM, the same prompts with the 50 virtual tokens replaced by 50 ordinary tokens (the
  same prompt length, sent as token ids): what the block costs over a prompt of the same length.
- a ``--burst`` (200) request run at 32 concurrent through vLLM: every answer must equal the one-by-one answer of
  its prompt (0 lost, 0 duplicated, 0 mixed up).

Rounds: the configurations run in a shuffled order per round (``--rounds``, default 1); ratios are of medians.

Start a server first (its own venv; see the serving guide, docs/serving.md), then::

    spring-rag serve smollm2-135m --dtype float32 &
    python benchmarks/serving.py --url http://127.0.0.1:8000     # writes benchmarks/results/serving.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from spring_core import PromptParts, SpringModel
from spring_core.data import demo_qa_path, read_qa
from spring_core.engine import Engine, Request
from spring_core.model.loading import DEFAULT_POOL
from spring_core.serving import VLLMBackend

TOKENS = "smollm2-135m-squad"
K = 50
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serving.json"


def prompts(spring: SpringModel) -> tuple[list[PromptParts], list[PromptParts]]:
    """SPRING prompts (k = 50) and plain prompts of the same token count (50 ordinary tokens at the block)."""
    rows = read_qa(demo_qa_path())
    spring_prompts, plain_prompts = [], []
    filler_ids = spring.tokenizer(" information" * K, add_special_tokens=False)["input_ids"][:K]
    filler = spring.tokenizer.decode(filler_ids)
    for row in rows:
        parts = spring.prompt_parts(row["question"], [p["text"] for p in row.get("passages", [])[:2]], K)
        plain = PromptParts(parts.before + filler + parts.after)
        if len(spring.encode(plain)) == len(spring.encode(parts)):
            spring_prompts.append(parts)
            plain_prompts.append(plain)
    return spring_prompts, plain_prompts


def run_load(engine: Engine, items: list[PromptParts], concurrency: int, new_tokens: int) -> dict[str, Any]:
    """Stream every prompt through ``engine`` with ``concurrency`` workers; requests/s and first-delta times."""
    def one(prompt: PromptParts) -> tuple[float, str]:
        start = time.perf_counter()
        settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}  # every answer has the same length
        stream = engine.stream(Request(prompt=prompt, settings=settings))
        first = None
        text = ""
        for delta in stream:
            first = first if first is not None else time.perf_counter() - start
            text += delta
        return (first if first is not None else time.perf_counter() - start), text

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, items))
    wall = time.perf_counter() - start
    return {"requests": len(items), "seconds": round(wall, 3), "requests_per_s": round(len(items) / wall, 3),
            "median_ttft_s": round(statistics.median(r[0] for r in results), 3)}


def burst(engine: Engine, items: list[PromptParts], total: int, new_tokens: int) -> dict[str, Any]:
    """``total`` requests at 32 concurrent; each answer must be its prompt's one-by-one answer."""
    settings = {"max_new_tokens": new_tokens}
    expected = [engine.generate(Request(prompt=p, settings=settings)).text for p in items]
    order = [i % len(items) for i in range(total)]
    random.Random(0).shuffle(order)
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda i: engine.generate(Request(prompt=items[i], settings=settings)).text, order))
    wrong = sum(answer != expected[i] for answer, i in zip(answers, order, strict=True))
    return {"requests": total, "answered": len(answers), "mismatched": wrong}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the vLLM server (spring-rag serve smollm2-135m --dtype float32)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, help="requests per configuration (default: 2 x concurrency, >= 8)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--burst", type=int, default=200, help="requests of the lost/duplicated check (0: skip)")
    parser.add_argument("--skip-hf-above", type=int, default=32, help="no hf runs above this concurrency")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    model, tokenizer = DEFAULT_POOL.get("smollm2-135m")
    spring = SpringModel(model, tokenizer, TOKENS, layout="raw")
    spring_prompts, plain_prompts = prompts(spring)
    engines = {"hf": Engine(spring), "vllm": Engine(spring, backend=VLLMBackend(args.url))}
    engines["vllm"].generate(Request(prompt=spring_prompts[0], settings={"max_new_tokens": 2}))  # connect + check

    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for concurrency in args.concurrency:
            count = args.requests or max(8, 2 * concurrency)
            configs = [("hf", spring_prompts), ("vllm", spring_prompts), ("vllm plain", plain_prompts)]
            random.shuffle(configs)
            for name, items in configs:
                if name == "hf" and concurrency > args.skip_hf_above:
                    continue
                load = [items[i % len(items)] for i in range(count)]
                engine = engines["hf" if name == "hf" else "vllm"]
                result = run_load(engine, load, concurrency, args.new_tokens)
                samples.setdefault((name, concurrency), []).append(result)
                print(f"{name:>11} x{concurrency:<3} {result}", flush=True)

    rows = []
    for (name, concurrency), runs in sorted(samples.items(), key=lambda item: (item[0][1], item[0][0])):
        rows.append({"backend": name, "concurrency": concurrency,
                     "requests_per_s": statistics.median(r["requests_per_s"] for r in runs),
                     "median_ttft_s": statistics.median(r["median_ttft_s"] for r in runs), "runs": runs})
    by_key = {(r["backend"], r["concurrency"]): r for r in rows}
    ratios = {}
    for concurrency in args.concurrency:
        spring_rps = by_key.get(("vllm", concurrency), {}).get("requests_per_s")
        plain_rps = by_key.get(("vllm plain", concurrency), {}).get("requests_per_s")
        hf_rps = by_key.get(("hf", concurrency), {}).get("requests_per_s")
        if spring_rps and plain_rps:
            ratios[f"plain/spring cost x{concurrency}"] = round(plain_rps / spring_rps, 3)
        if spring_rps and hf_rps:
            ratios[f"vllm/hf requests_per_s x{concurrency}"] = round(spring_rps / hf_rps, 3)
    burst_result = burst(engines["vllm"], spring_prompts, args.burst, args.new_tokens) if args.burst else None

    print(f"\n{'backend':>11} {'conc':>4} {'req/s':>8} {'ttft s':>8}")
    for row in rows:
        print(f"{row['backend']:>11} {row['concurrency']:>4} {row['requests_per_s']:>8.2f} "
              f"{row['median_ttft_s']:>8.2f}")
    for name, value in ratios.items():
        print(f"{name}: {value}")
    if burst_result:
        print(f"burst: {burst_result}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "config": {"model": "smollm2-135m", "tokens": TOKENS, "k": K, "new_tokens": args.new_tokens,
                   "dtype": str(model.dtype), "prompts": len(spring_prompts), "rounds": args.rounds},
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cuda": torch.cuda.is_available()},
        "results": rows, "ratios": ratios, "burst": burst_result,
    }, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
