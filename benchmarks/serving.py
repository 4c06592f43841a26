"""Serving throughput: the in-process transformers backend against a vLLM server, and SPRING's block through vLLM
against a plain prompt of the same length, side by side in one run.

What is measured (SmolLM2-135M-Instruct, float32, greedy, exactly ``--new-tokens`` (16) new tokens
(``min_new_tokens``: the end of sequence is ignored until then, so every configuration decodes as much), raw
layout, SQuAD questions of the bundled demo slice with their passages):

- ``hf``: ``Engine(spring)`` in this process; concurrent requests are threads sharing the one model.
- ``vllm``: ``Engine(thin, backend=VLLMBackend(url))``: the same prompts from a thin client (tokenizer and
  embedding rows, no layers; ``spring_core.serving.thin``), a block sent alone as embeddings and the rest as text the
  server tokenizes to the same ids (a split request, the default).
- ``vllm whole``: the same, each prompt sent whole as float32 ``prompt_embeds`` (``split=False``: the requests of
  the client before the split).
- at 1, 8 and 32 concurrent requests (``--concurrency``), each configuration sends ``--requests`` requests
  (default: 2 x the concurrency, at least 8) through a pool of that many workers, streaming, and records
  requests/s (requests / wall time) and the median time to the first streamed delta.
- ``vllm plain``: through vLLM, the same prompts with the 50 virtual tokens replaced by 50 ordinary tokens (the
  same prompt length, sent as token ids): what the block costs over a prompt of the same length.
- client footprint, each in a fresh process: RSS and start-up time (imports, loading, and the first 2-token answer:
  the model check included) of the in-process model, the full client (the model loaded, as before the thin
  client) and the thin client; the Python baseline (the imports alone) and the input embedding's size for scale.
- bytes per request: the mean JSON body of the SPRING prompts, whole-prompt float32 and float16 embeddings against
  the split request.
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
from spring_core.serving.http import Deadline
from spring_core.serving.thin import thin_spring_model

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


FOOTPRINT = r"""
import json, resource, sys, time
start = time.perf_counter()
kind, url, tokens = sys.argv[1:4]
from spring_core import SpringModel
from spring_core.data import demo_qa_path, read_qa
from spring_core.options import generation_settings
from spring_core.serving import VLLMBackend
from spring_core.serving.thin import thin_spring_model
if kind != "python baseline":
    if kind == "thin client":
        spring = thin_spring_model("smollm2-135m", tokens, layout="raw")
    else:
        spring = SpringModel.from_pretrained("smollm2-135m", tokens, layout="raw")
    row = read_qa(demo_qa_path())[0]
    prompt = spring.prompt_parts(row["question"], [p["text"] for p in row["passages"][:2]], 50)
    if kind == "in process":
        spring.generate_from_prompt(prompt, max_new_tokens=2)
    else:
        VLLMBackend(url).generate(spring, prompt, generation_settings({"max_new_tokens": 2}))
seconds = time.perf_counter() - start
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"client": kind, "rss_mb": round(rss / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
                  "start_s": round(seconds, 2)}))
"""


def footprint(url: str, repeats: int) -> list[dict[str, Any]]:
    """RSS and start-up time of each kind of client, each in a fresh process (medians of ``repeats``)."""
    import subprocess
    import sys

    rows = []
    for kind in ("python baseline", "in process", "full client", "thin client"):
        runs = []
        for _ in range(repeats):
            out = subprocess.run([sys.executable, "-c", FOOTPRINT, kind, url, TOKENS], capture_output=True,
                                 text=True, check=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        rows.append({"client": kind, **{key: statistics.median(r[key] for r in runs)
                                        for key in ("rss_mb", "peak_rss_mb", "start_s")}, "runs": runs})
        print(f"{kind:>16} {rows[-1]}", flush=True)
    return rows


def request_bytes(spring: SpringModel, url: str, items: list[PromptParts]) -> dict[str, float]:
    """Mean JSON body of the SPRING prompts: whole-prompt float32 and float16 embeddings, and split requests."""
    settings = options_settings(16)
    sizes = {}
    for name, backend in (("whole float32", VLLMBackend(url, split=False)),
                          ("whole float16", VLLMBackend(url, split=False, dtype="float16")),
                          ("split", VLLMBackend(url))):
        bodies = [backend._prepare(spring, p, settings, None, stream=False, deadline=Deadline(None)).body
                  for p in items]
        sizes[name] = round(statistics.mean(len(json.dumps(body)) for body in bodies))
    sizes["prompt tokens"] = round(statistics.mean(len(spring.encode(p)) for p in items), 1)
    return sizes


def options_settings(new_tokens: int) -> Any:
    from spring_core.options import generation_settings

    return generation_settings({"max_new_tokens": new_tokens})


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
    parser.add_argument("--footprint-repeats", type=int, default=3, help="fresh processes per client kind (0: skip)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    clients = footprint(args.url, args.footprint_repeats) if args.footprint_repeats else None
    model, tokenizer = DEFAULT_POOL.get("smollm2-135m")
    spring = SpringModel(model, tokenizer, TOKENS, layout="raw")
    thin = thin_spring_model("smollm2-135m", TOKENS, layout="raw")
    spring_prompts, plain_prompts = prompts(spring)
    sizes = request_bytes(thin, args.url, spring_prompts)
    print(f"bytes per request: {sizes}", flush=True)
    engines = {"hf": Engine(spring), "vllm": Engine(thin, backend=VLLMBackend(args.url)),
               "vllm whole": Engine(thin, backend=VLLMBackend(args.url, split=False))}
    for name in ("vllm", "vllm whole"):
        engines[name].generate(Request(prompt=spring_prompts[0], settings={"max_new_tokens": 2}))  # connect + check

    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for concurrency in args.concurrency:
            count = args.requests or max(8, 2 * concurrency)
            configs = [("hf", spring_prompts), ("vllm", spring_prompts), ("vllm whole", spring_prompts),
                       ("vllm plain", plain_prompts)]
            random.shuffle(configs)
            for name, items in configs:
                if name == "hf" and concurrency > args.skip_hf_above:
                    continue
                load = [items[i % len(items)] for i in range(count)]
                engine = engines["vllm" if name == "vllm plain" else name]
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
        whole_rps = by_key.get(("vllm whole", concurrency), {}).get("requests_per_s")
        plain_rps = by_key.get(("vllm plain", concurrency), {}).get("requests_per_s")
        hf_rps = by_key.get(("hf", concurrency), {}).get("requests_per_s")
        if spring_rps and plain_rps:
            ratios[f"plain/spring cost x{concurrency}"] = round(plain_rps / spring_rps, 3)
        if whole_rps and plain_rps:
            ratios[f"plain/spring-whole cost x{concurrency}"] = round(plain_rps / whole_rps, 3)
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
        "results": rows, "ratios": ratios, "burst": burst_result, "clients": clients, "request_bytes": sizes,
        "embedding_mb": round(thin.inputs.vocab_rows * thin.inputs.width * 4 / 2**20, 1),
    }, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
