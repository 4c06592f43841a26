"""Latency overhead of SPRING virtual tokens against the untouched Hugging Face path, measured side by side.

What is measured (SmolLM2-135M-Instruct, CPU, float32, greedy decoding, 16 new tokens, batch of one):

- ``base``: the plain Hugging Face path: ``tokenizer(prompt)`` + ``model.generate`` + ``tokenizer.decode``, with a
  ``GenerationConfig`` built the way ``SpringModel`` builds its own, on a prompt of exactly 256 tokens.
- ``spring k=0``, ``k=1``, ``k=10``, ``k=50``: ``SpringModel.generate_from_prompt`` on the same prompt with a
  block of k virtual tokens between the passages and the question (``k=0``: no block, the ``base`` prompt). The
  50 virtual tokens are ``VirtualTokens.from_text`` (untrained: the values do not change the cost).
- ``spring k=50 healed``: the ``k=50`` prompt with a space after its ``Answer:``, which ``SpringModel`` heals
  (``spring_core.model.healing``): the model reads the same ids as ``k=50`` and the first new token is constrained to
  those that start with a space, so the ratio of the two is the constraint's cost.
- ``base 306 tokens``: the plain path on the 256-token prompt plus 50 ordinary tokens where the block would be
  (the tokens the virtual ones are initialised from), to compare ``k=50`` with reading 50 more real tokens.

The prompt is built from the passages of the first rows of the bundled demo data
(``spring_core/resources/demo_qa.jsonl``) when present, else from a fixed English paragraph, then trimmed so the
prompt is exactly 256 tokens with ``Question: ...\\nAnswer:`` kept at its end (the ``raw`` layout).

Every variant must decode exactly 16 tokens for the times to be comparable. Each variant is run once first
(warm-up) and its natural number of new tokens is recorded. If a variant ends early (untrained tokens often make
the model emit its end-of-sequence token at once), 16 tokens are forced for *all* variants alike by setting
``min_new_tokens`` on the model's own ``generation_config``, which ``generate`` merges into the config that both
paths pass (``--allow-early-stop`` keeps the natural lengths instead). The table reports the tokens decoded.

Method: ``--repeats`` rounds (default 7); each round runs every variant once in a shuffled order, so drift in
machine load hits all variants alike; each call is timed with ``time.perf_counter``. Reported per variant: the
median, the minimum and the interquartile range; ratios are ratios of medians. The script also checks that
``spring k=0`` returns exactly the ``base`` text (the pluggable promise) and exits with status 1 if not.

Run (from the repository root)::

    python benchmarks/overhead.py                   # 7 rounds, writes benchmarks/results/overhead.json
    python benchmarks/overhead.py --repeats 15 --out benchmarks/results/overhead-15.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import torch
import transformers
from transformers import GenerationConfig

from spring_core import PromptParts, SpringModel, VirtualTokens, build_prompt
from spring_core.prompts.layouts import DEFAULT_INSTRUCTION, format_passage

MODEL = "smollm2-135m"
PROMPT_TOKENS = 256
EXTRA_TOKENS = 50
NEW_TOKENS = 16
N_VIRTUAL = 50
KS = (0, 1, 10, 50)
DEMO_FILE = "demo_qa.jsonl"
NOISY_SPREAD = 0.05  # a target is not judged reliable when IQR / median exceeds this on either side
T = TypeVar("T")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "overhead.json"

BASE = "base"
BASE_LONG = f"base {PROMPT_TOKENS + EXTRA_TOKENS} tokens"
HEALED = f"spring k={KS[-1]} healed"
TARGETS = (  # (name, numerator, denominator, limit) from the issue
    ("k=0 / base", "spring k=0", BASE, 1.02),
    (f"k=50 / base-{PROMPT_TOKENS + EXTRA_TOKENS}", "spring k=50", BASE_LONG, 1.03),
)

FALLBACK_QUESTION = "How did the design of the bicycle change during the nineteenth century?"
FALLBACK_PASSAGES = (
    "The first two-wheeled machine that a rider could steer was built in 1817 by Karl Drais, a civil servant "
    "of the Grand Duchy of Baden. His running machine had no pedals: the rider sat on a wooden frame between "
    "two wheels of the same size and pushed against the ground with both feet, steering the front wheel with "
    "a simple bar. Copies were soon made in France and in England, where they were called hobby horses or "
    "dandy horses, but the fashion faded within a few years, partly because riders used the pavements and "
    "several cities banned them.",
    "In the 1860s French makers fitted cranks and pedals directly to the hub of the front wheel. These "
    "velocipedes had iron frames and wooden wheels with iron tyres, and on the rough roads of the time they "
    "earned the name boneshakers. Because every turn of the pedals turned the front wheel once, the only way "
    "to go faster was to make that wheel larger, and in the 1870s this led to the high wheeler, often called "
    "the penny-farthing, whose front wheel could be as tall as the rider's shoulder. It was light and quick "
    "thanks to wire spokes and solid rubber tyres, but a sudden stop could throw the rider over the handlebar.",
    "The safety bicycle of the 1880s solved that problem. John Kemp Starley's Rover of 1885 had two wheels of "
    "similar size, a chain drive to the rear wheel and gearing that let a small wheel turn as fast as a large "
    "one. A few years later John Boyd Dunlop's pneumatic tyre made the ride far smoother, and the diamond "
    "frame of steel tubes became the standard shape. By the end of the century the bicycle was cheap enough "
    "for many working people and gave them a new freedom to travel, and women in particular used it to move "
    "about on their own.",
)


@dataclass
class RunResult:
    """What one call returned: the answer text and how many real prompt / new tokens it used."""

    text: str
    prompt_tokens: int
    new_tokens: int


@dataclass
class Variant:
    """One timed configuration: a name, its prompt and a callable that runs it once."""

    name: str
    prompt: str
    virtual_tokens: int
    run: Callable[[], RunResult]
    natural: RunResult | None = None
    last: RunResult | None = None
    outputs: set[str] = field(default_factory=set)
    times: list[float] = field(default_factory=list)


# ----- prompt ------------------------------------------------------------------------------------------------


def source_texts() -> tuple[str, list[str], str]:
    """``(question, passages, source)``: the first demo rows' passages (distinct, in order) or the fallback."""
    demo = resources.files("spring_core") / "resources" / DEMO_FILE
    if not demo.is_file():
        return FALLBACK_QUESTION, list(FALLBACK_PASSAGES), "fallback paragraph in benchmarks/overhead.py"
    rows = [json.loads(line) for line in demo.read_text(encoding="utf-8").splitlines() if line.strip()]
    passages: list[str] = []
    for row in rows:
        for passage in row.get("passages", []):
            text = format_passage(passage)
            if text not in passages:
                passages.append(text)
    return rows[0]["question"], passages, f"spring_core/resources/{DEMO_FILE}"


def token_count(sm: SpringModel, text: str) -> int:
    """Tokens the model reads for a prompt without markers."""
    return len(sm.encode(PromptParts(text)))


def first_fit(render: Callable[[int], T], count: Callable[[T], int], target: int, candidates: Sequence[int]) -> T:
    """``render(m)`` for the first ``m`` in ``candidates`` whose token count is exactly ``target``."""
    for m in candidates:
        candidate = render(m)
        if count(candidate) == target:
            return candidate
    raise RuntimeError(f"no candidate length gives a prompt of exactly {target} tokens")


def fit_prompt(sm: SpringModel, question: str, passages: Sequence[str], target: int) -> PromptParts:
    """The raw layout (passages, block, question) with passages filled, then cut so it is ``target`` tokens."""

    def count(parts: PromptParts) -> int:
        return token_count(sm, parts.render())

    kept: list[str] = []
    for passage in passages:
        if count(build_prompt(question, [*kept, passage], 0)) >= target:
            ids = sm.tokenizer(passage, add_special_tokens=False)["input_ids"]
            head = list(kept)

            def render(m: int, ids: list[int] = ids, head: list[str] = head) -> PromptParts:
                cut = sm.tokenizer.decode(ids[:m]).strip()
                return build_prompt(question, [*head, cut] if cut else head, 0)

            return first_fit(render, count, target, range(len(ids), -1, -1))
        kept.append(passage)
    raise RuntimeError(f"the passages hold fewer than {target} tokens; add text to the fallback paragraph")


def filler_prompt(sm: SpringModel, parts: PromptParts, filler_text: str, extra: int) -> str:
    """``parts`` with about ``extra`` ordinary tokens (``filler_text`` repeated) in place of the block,
    adjusted so the prompt is exactly ``extra`` tokens longer than ``parts`` without a block."""
    ids = sm.tokenizer(filler_text, add_special_tokens=False)["input_ids"]
    target = token_count(sm, parts.plain_text()) + extra

    def render(m: int) -> str:
        return parts.before + sm.tokenizer.decode([ids[i % len(ids)] for i in range(m)]) + "\n" + parts.after

    candidates = sorted(range(2 * extra + 1), key=lambda m: abs(m - extra))
    return first_fit(render, lambda text: token_count(sm, text), target, candidates)


# ----- variants ----------------------------------------------------------------------------------------------


def generation_config(sm: SpringModel) -> GenerationConfig:
    """Greedy decoding of ``NEW_TOKENS`` tokens, built like ``SpringModel._generation_kwargs`` builds its own."""
    eos = sm.model.generation_config.eos_token_id
    return GenerationConfig(
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        eos_token_id=eos if eos is not None else sm.tokenizer.eos_token_id,
        pad_token_id=sm.pad_token_id,
    )


def base_runner(model: Any, tokenizer: Any, prompt: str, config: GenerationConfig) -> Callable[[], RunResult]:
    """The untouched Hugging Face path: tokenize, ``model.generate``, decode the new tokens."""

    def run() -> RunResult:
        encoded = tokenizer(prompt, return_tensors="pt")
        input_ids = encoded["input_ids"].to(model.device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=encoded["attention_mask"].to(model.device),
                generation_config=config,
            )
        new = output[0, input_ids.shape[1]:]
        return RunResult(tokenizer.decode(new, skip_special_tokens=True), int(input_ids.shape[1]), int(new.shape[0]))

    return run


def spring_runner(sm: SpringModel, prompt: PromptParts) -> Callable[[], RunResult]:
    """``SpringModel.generate_from_prompt`` on a prompt with a block of ``prompt.k`` virtual tokens."""

    def run() -> RunResult:
        out = sm.generate_from_prompt(prompt, max_new_tokens=NEW_TOKENS)
        return RunResult(out.text, out.usage.prompt_tokens, out.usage.completion_tokens)

    return run


def build_variants(sm: SpringModel, parts: PromptParts, long_prompt: str) -> list[Variant]:
    config = generation_config(sm)
    variants = [Variant(BASE, parts.plain_text(), 0, base_runner(sm.model, sm.tokenizer, parts.plain_text(), config))]
    for k in KS:
        prompt = parts.with_k(k)
        variants.append(Variant(f"spring k={k}", prompt.render(), k, spring_runner(sm, prompt)))
    healed = PromptParts(parts.before, KS[-1], parts.after + " ")
    variants.append(Variant(HEALED, healed.render(), KS[-1], spring_runner(sm, healed)))
    variants.append(Variant(BASE_LONG, long_prompt, 0, base_runner(sm.model, sm.tokenizer, long_prompt, config)))
    return variants


@contextlib.contextmanager
def forced_length(model: Any, tokens: int | None) -> Iterator[None]:
    """Make every ``generate`` call on ``model`` decode at least ``tokens`` tokens (``None``: leave as is)."""
    if tokens is None:
        yield
        return
    saved = model.generation_config.min_new_tokens
    model.generation_config.min_new_tokens = tokens
    try:
        yield
    finally:
        model.generation_config.min_new_tokens = saved


# ----- measurement -------------------------------------------------------------------------------------------


def warm_up(variants: Sequence[Variant]) -> dict[str, RunResult]:
    """Run each variant once, untimed; returns what each produced."""
    return {v.name: v.run() for v in variants}


def measure(variants: Sequence[Variant], repeats: int, rng: random.Random) -> None:
    """``repeats`` rounds, each running every variant once in a fresh shuffled order."""
    for _ in range(repeats):
        order = list(variants)
        rng.shuffle(order)
        for variant in order:
            start = time.perf_counter()
            result = variant.run()
            variant.times.append(time.perf_counter() - start)
            variant.last = result
            variant.outputs.add(result.text)


def summary(times: Sequence[float]) -> dict[str, float]:
    """Median, minimum, quartiles and interquartile range of a list of seconds."""
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (times[0],) * 3
    return {"median_s": statistics.median(times), "min_s": min(times), "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1}


def ratios(medians: dict[str, float]) -> dict[str, float]:
    """Each spring variant over ``base``, and ``k=50`` over the plain prompt with 50 more real tokens."""
    out = {f"k={k} / base": medians[f"spring k={k}"] / medians[BASE] for k in KS}
    out[f"k=50 / base-{PROMPT_TOKENS + EXTRA_TOKENS}"] = medians["spring k=50"] / medians[BASE_LONG]
    out["k=50 healed / k=50"] = medians[HEALED] / medians["spring k=50"]
    return out


# ----- report ------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
    }


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def markdown_table(variants: Sequence[Variant], stats: dict[str, dict[str, float]]) -> str:
    rows = [
        "| variant | prompt tokens | virtual tokens | new tokens | median s | min s | IQR s | ratio vs base |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = stats[BASE]["median_s"]
    for v in variants:
        s = stats[v.name]
        assert v.last is not None and v.natural is not None
        new = str(v.last.new_tokens)
        if v.natural.new_tokens != v.last.new_tokens:
            new += f" (natural: {v.natural.new_tokens})"
        rows.append(
            f"| {v.name} | {v.last.prompt_tokens} | {v.virtual_tokens} | {new} | {s['median_s']:.4f} | "
            f"{s['min_s']:.4f} | {s['iqr_s']:.4f} | {s['median_s'] / base:.3f} |"
        )
    return "\n".join(rows)


def target_lines(ratio_values: dict[str, float], stats: dict[str, dict[str, float]],
                 ) -> tuple[list[str], list[dict[str, Any]]]:
    """One line per target (met / not met), flagged when the spread of either side is too wide to judge it."""
    lines, records = [], []
    for name, numerator, denominator, limit in TARGETS:
        value = ratio_values[name]
        met = value <= limit
        spread = max(stats[v]["iqr_s"] / stats[v]["median_s"] for v in (numerator, denominator))
        line = f"target {name} <= {limit:.2f}: {value:.3f} -> {'met' if met else 'NOT met'}"
        if spread > NOISY_SPREAD:
            line += f" (unreliable: IQR is {spread:.0%} of a median; rerun with more --repeats on an idle machine)"
        lines.append(line)
        records.append({"name": name, "ratio": value, "limit": limit, "met": met, "relative_iqr": spread,
                        "reliable": spread <= NOISY_SPREAD})
    return lines, records


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds over all variants (default: 7)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON results file (default: benchmarks/results/overhead.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round shuffle (default: 0)")
    parser.add_argument("--allow-early-stop", action="store_true",
                        help="do not force 16 new tokens when a variant stops early; time natural lengths")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = load_average()
    sm = SpringModel.from_pretrained(MODEL, device="cpu", dtype="float32")
    sm = SpringModel(sm.model, sm.tokenizer, VirtualTokens.from_text(sm, n=N_VIRTUAL))

    question, passages, source = source_texts()
    parts = fit_prompt(sm, question, passages, PROMPT_TOKENS)
    long_prompt = filler_prompt(sm, parts, DEFAULT_INSTRUCTION, EXTRA_TOKENS)
    variants = build_variants(sm, parts, long_prompt)

    for name, result in warm_up(variants).items():
        next(v for v in variants if v.name == name).natural = result
    early = [v.name for v in variants if v.natural is not None and v.natural.new_tokens < NEW_TOKENS]
    force = NEW_TOKENS if early and not args.allow_early_stop else None
    if early:
        print(f"stopped before {NEW_TOKENS} new tokens without forcing: {', '.join(early)}"
              + (f"; forcing {NEW_TOKENS} tokens for every variant" if force else ""))

    with forced_length(sm.model, force):
        if force:
            warm_up(variants)
        measure(variants, args.repeats, random.Random(args.seed))

    stats = {v.name: summary(v.times) for v in variants}
    ratio_values = ratios({name: s["median_s"] for name, s in stats.items()})
    by_name = {v.name: v for v in variants}
    pluggable = by_name["spring k=0"].outputs == by_name[BASE].outputs and len(by_name[BASE].outputs) == 1
    pluggable = pluggable and by_name["spring k=0"].natural.text == by_name[BASE].natural.text

    print(f"\nSmolLM2-135M-Instruct, CPU fp32, greedy, {NEW_TOKENS} new tokens, {args.repeats} interleaved rounds, "
          f"{torch.get_num_threads()} torch threads, load average {load_before} -> {load_average()}\n")
    print(markdown_table(variants, stats))
    print()
    for name, value in ratio_values.items():
        print(f"{name}: {value:.3f}")
    lines, target_records = target_lines(ratio_values, stats)
    print("\n".join(lines))
    print(f"spring k=0 text == base text: {pluggable} ({next(iter(by_name[BASE].outputs))!r})")

    report = {
        "machine": {**machine_info(), "load_average_before": load_before, "load_average_after": load_average()},
        "settings": {
            "model": sm.name, "device": "cpu", "dtype": "float32", "decoding": "greedy",
            "prompt_tokens": PROMPT_TOKENS, "extra_tokens": EXTRA_TOKENS, "max_new_tokens": NEW_TOKENS,
            "forced_min_new_tokens": force, "repeats": args.repeats, "seed": args.seed, "ks": list(KS),
            "virtual_tokens_loaded": N_VIRTUAL, "virtual_token_init": "from_text(DEFAULT_INSTRUCTION)",
            "data_source": source, "question": question, "prompt": parts.plain_text(), "long_prompt": long_prompt,
        },
        "variants": {
            v.name: {
                "prompt_tokens": v.last.prompt_tokens, "virtual_tokens": v.virtual_tokens,
                "new_tokens": v.last.new_tokens, "natural_new_tokens": v.natural.new_tokens,
                "text": v.last.text, "natural_text": v.natural.text, "times_s": v.times, **stats[v.name],
            }
            for v in variants if v.last is not None and v.natural is not None
        },
        "medians_s": {name: s["median_s"] for name, s in stats.items()},
        "ratios": ratio_values,
        "targets": target_records,
        "pluggable_k0_equals_base": pluggable,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    if not pluggable:
        print("FAIL: spring k=0 did not return the base text", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
