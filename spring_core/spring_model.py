"""SpringModel: a frozen Hugging Face causal LM that reads virtual tokens ``[r1]..[rk]`` at a block.

A prompt is a ``PromptParts``: text before the block, ``k``, text after it. The virtual tokens get ids past the
base vocabulary (``vocab_rows + i``); before the forward pass those ids are replaced by rows of the
``VirtualTokens`` table in ``inputs_embeds``, every other id goes through the base embedding. A prompt with
``k=0`` (or a plain string) is passed to the base model as plain ``input_ids``, so its logits are bit-identical to
the untouched model's. Text is never searched for markers: ``[r1]`` inside a question, passage or prompt string is
ordinary text. The lm_head has no rows for virtual ids, so they can never be generated.

Example:
    >>> from spring_core import SpringModel
    >>> sm = SpringModel.from_pretrained("smollm2-135m", tokens="my-tokens/")       # doctest: +SKIP
    >>> out = sm.generate("Who founded X?", passages=["X was founded by Y."], k=10)  # doctest: +SKIP
    >>> out.text, out.usage.virtual_tokens                                          # doctest: +SKIP
    ('Y', 10)
    >>> for delta in sm.stream("Who founded X?", passages=["..."], k=10): ...      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from spring_core.errors import MarkerError, ModelMismatchError
from spring_core.healing import heal_for_model, visible
from spring_core.inputs import InputLayer
from spring_core.models import DEFAULT_MODEL, load_model, model_display_name
from spring_core.modes import MODES
from spring_core.prompts import Passage, PromptParts, build_prompt
from spring_core.tokens import VirtualTokens
from spring_core.usage import Usage, cut_at_stop, tokens_until_stop

__all__ = ["Generation", "GenerationSettings", "GenerationStream", "SpringModel", "Usage"]


@dataclass
class Generation:
    """What ``generate`` returns: the answer text, its token usage and why generation ended."""

    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"  # "stop": end of sequence or a stop string; "length": max_new_tokens reached
    prompt: str = ""  # the prompt for display and logs, its block written as [r1]..[rk] (``PromptParts.render``)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding options; ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0  # end-of-sequence is ignored until this many tokens (benchmarks of equal lengths)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))


class SpringModel:
    """A base causal LM, its tokenizer and (optionally) a table of SPRING virtual tokens.

    Args:
        model: a Hugging Face causal LM; its weights are only read, never written.
        tokenizer: its tokenizer (left untouched; markers are handled by spring-rag, not added to it).
        tokens: a ``VirtualTokens`` table made for this model, a path to an artifact folder, or ``None`` for the
            plain base model.
        layout: ``"raw"`` (the paper's completion prompt) or ``"chat"`` (the chat template's user turn); by
            default the layout the tokens were trained with, else ``"raw"``.
    """

    def __init__(self, model: Any, tokenizer: Any, tokens: VirtualTokens | str | Path | None = None, *,
                 layout: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        if isinstance(tokens, (str, Path)):
            tokens = VirtualTokens.load(tokens, model=model)
        elif tokens is not None:
            tokens.check_compatible(model)
        _check_adapter(tokens, model)
        self.tokens: VirtualTokens | None = tokens
        self.layout = layout or (tokens.layout if tokens is not None else "raw")
        self.name = model_display_name(model)
        self.inputs = InputLayer(model, tokenizer)
        self.vocab_rows = self.inputs.vocab_rows
        self.pad_token_id = self.inputs.pad_token_id  # None when the tokenizer has neither pad nor eos

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, tokens: VirtualTokens | str | Path | None = None,
                        *, device: str | None = None, dtype: str | torch.dtype | None = None, model: Any = None,
                        tokenizer: Any = None, layout: str | None = None,
                        device_map: str | dict[str, Any] | None = None) -> SpringModel:
        """Load a base model (HF id, local folder, ``.gguf`` file or alias such as ``smollm2-135m``) with tokens.

        ``device="cuda"``, ``dtype="bfloat16"`` (or ``device_map="auto"``) run it on GPUs; the token table stays
        float32 and is cast to the model's dtype and device when spliced in (see ``load_model``).
        """
        model, tokenizer = load_model(name_or_path, device=device, dtype=dtype, model=model, tokenizer=tokenizer,
                                      device_map=device_map)
        return cls(model, tokenizer, tokens, layout=layout)

    def with_tokens(self, tokens: VirtualTokens | str | Path | None, *, layout: str | None = None) -> SpringModel:
        """A SpringModel over the same base model and tokenizer (nothing is copied) with other virtual tokens."""
        return SpringModel(self.model, self.tokenizer, tokens, layout=layout)

    @property
    def n(self) -> int:
        """How many virtual tokens are loaded (0 without an artifact)."""
        return self.tokens.n if self.tokens is not None else 0

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    def __repr__(self) -> str:
        return f"SpringModel(model={self.name!r}, n={self.n}, layout={self.layout!r})"

    # ----- prompts -------------------------------------------------------------------------------------------

    def prompt_parts(self, question: str, passages: Sequence[Passage] | None = None, k: int | None = None,
                     ) -> PromptParts:
        """The stored layout for a question and its passages, with ``k`` (default: all ``n``) virtual tokens.

        What the question and passages say is text only: a marker-like string in them is never a virtual token.
        """
        k = self.check_k(self.n if k is None else k)
        return build_prompt(question, passages, k, layout=self.layout, tokenizer=self.tokenizer)

    def check_k(self, k: int) -> int:
        """Return ``k`` if ``0 <= k <= n``, else raise ``MarkerError`` saying what range is allowed."""
        if not isinstance(k, int) or not 0 <= k <= self.n:
            raise MarkerError(
                f"k = {k} is out of range: this model has n = {self.n} virtual tokens, so use 0 <= k <= {self.n}"
                + ("" if self.n else " (load an artifact with tokens= to use k > 0)")
            )
        return k

    def as_parts(self, prompt: PromptParts | str) -> PromptParts:
        """A prompt as ``PromptParts``: a string is plain text (no block, whatever it contains); the block's ``k``
        is checked against ``n``."""
        if isinstance(prompt, str):
            return PromptParts(prompt)
        self.check_k(prompt.k)
        return prompt

    # ----- the input layer (spring_core.inputs) --------------------------------------------------------------

    def encode(self, parts: PromptParts) -> list[int]:
        """Token ids of a prompt with exactly one BOS; virtual token ``[ri]`` is the id ``vocab_rows + i - 1``.

        With ``k == 0`` this is exactly ``tokenizer(prompt)["input_ids"]`` (without special tokens for a prompt
        rendered by a chat template, which holds them already; see ``spring_core.inputs``).
        """
        return self.inputs.encode(parts)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``inputs_embeds`` for ids that may include virtual ids (differentiable w.r.t. the token table)."""
        return self.inputs.embed(input_ids, self._table())

    def model_inputs(self, batch: Sequence[Sequence[int]], *, positions: bool = False) -> dict[str, torch.Tensor]:
        """Left-padded model inputs: ``input_ids`` when no virtual token is present, else ``inputs_embeds``
        (plus ``position_ids`` that follow the mask, with ``positions``)."""
        return self.inputs.batch(batch, self._table(), positions=positions)

    def eos_ids(self) -> set[int]:
        """The ids that end a generation (the model's generation config first, else the tokenizer's eos)."""
        return set(self.inputs.eos_token_ids())

    def _table(self) -> torch.Tensor | None:
        return None if self.tokens is None else self.tokens.weight

    @torch.inference_mode()
    def logits(self, prompt: PromptParts | str) -> torch.Tensor:
        """Next-token logits over the prompt, ``[1, length, vocab]`` (virtual tokens spliced in at the block)."""
        inputs = self.model_inputs([self.encode(self.as_parts(prompt))])
        return self.model(**inputs).logits

    # ----- generation ----------------------------------------------------------------------------------------

    def generate(self, question: str, passages: Sequence[Passage] | None = None, k: int | None = None, *,
                 mode: str = "concat", scores: Sequence[float] | None = None, weight_temperature: float = 1.0,
                 **settings: Any) -> Generation:
        """Answer ``question`` from ``passages`` with ``k`` virtual tokens (default all ``n``) in the stored layout.

        ``mode``: ``concat`` (all passages in one prompt, the default), or marginal decoding over the passages
        read one by one (``rag-token``, ``rag-sequence``, ``rag-sequence-fast``; see ``spring_core.decoding``),
        weighted by ``softmax(scores / weight_temperature)`` (uniform without ``scores``).
        Settings: ``max_new_tokens`` (64), ``min_new_tokens`` (0), ``temperature`` (0 = greedy), ``top_p``, ``seed``,
        ``stop`` (strings).
        """
        if mode == "concat":
            return self._generate_parts([self.prompt_parts(question, passages, k)], parse_settings(settings))[0]
        return self._generate_marginal(question, passages, k, mode, scores, weight_temperature, settings)

    def _generate_marginal(self, question: str, passages: Sequence[Passage] | None, k: int | None, mode: str,
                           scores: Sequence[float] | None, weight_temperature: float,
                           settings: Mapping[str, Any]) -> Generation:
        from spring_core.decoding import rag_sequence, rag_token

        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        parsed = parse_settings(settings)
        if parsed.top_p < 1 or parsed.min_new_tokens or (mode != "rag-token" and parsed.temperature > 0):
            raise ValueError(f"mode {mode!r} does not support top_p or min_new_tokens, and only rag-token samples "
                             "(temperature > 0)")
        passages = list(passages or [])
        scores = [0.0] * len(passages) if scores is None else scores
        k = self.n if k is None else k
        if mode == "rag-token":
            out = rag_token(self, question, passages, scores, k=k, max_new_tokens=parsed.max_new_tokens,
                            temperature=parsed.temperature, seed=parsed.seed, weight_temperature=weight_temperature,
                            stop=parsed.stop)
        else:
            out = rag_sequence(self, question, passages, scores, k=k, max_new_tokens=parsed.max_new_tokens,
                               fast=mode == "rag-sequence-fast", weight_temperature=weight_temperature,
                               stop=parsed.stop)
        # The decoders stop at the stop strings inside generate() and count only the tokens up to them.
        return Generation(text=out.text, usage=out.usage, finish_reason=out.finish_reason,
                          prompt=self.prompt_parts(question, passages[:1], k).render())

    def generate_from_prompt(self, prompt: PromptParts | str, **settings: Any) -> Generation:
        """Generate from a finished prompt: ``PromptParts`` (with its block) or a plain string (no block)."""
        return self._generate_parts([self.as_parts(prompt)], parse_settings(settings))[0]

    def generate_batch(self, items: Sequence[PromptParts | str | Mapping[str, Any]], *, batch_size: int = 8,
                       **settings: Any) -> list[Generation]:
        """Generate for many prompts at once (left padding); greedy results equal one-by-one calls.

        Each item is a prompt (``PromptParts`` or a plain string, as for ``generate_from_prompt``) or a mapping
        with ``question`` and optional ``passages`` and ``k`` (as for ``generate``).
        """
        parsed = parse_settings(settings)
        parts = [self._item_parts(item) for item in items]
        results: list[Generation] = []
        for start in range(0, len(parts), batch_size):
            results.extend(self._generate_parts(parts[start:start + batch_size], parsed))
        return results

    def stream(self, question: str, passages: Sequence[Passage] | None = None, k: int | None = None, *,
               mode: str = "concat", scores: Sequence[float] | None = None, weight_temperature: float = 1.0,
               **settings: Any) -> GenerationStream:
        """Yield the answer as text deltas; joined they equal ``generate(...).text``.

        Once the stream is exhausted its ``result`` is the same ``Generation`` (usage, finish reason) that
        ``generate`` returns. The marginal modes settle the answer only at the end (RAG-Sequence compares whole
        candidates), so they yield it as one delta.
        """
        if mode == "concat":
            return self._stream_parts(self.prompt_parts(question, passages, k), parse_settings(settings))
        generation = self._generate_marginal(question, passages, k, mode, scores, weight_temperature, settings)
        stream = GenerationStream()
        stream._deltas = iter([generation.text] if generation.text else [])
        stream.result = generation
        return stream

    def stream_from_prompt(self, prompt: PromptParts | str, **settings: Any) -> GenerationStream:
        """Streaming twin of ``generate_from_prompt``."""
        return self._stream_parts(self.as_parts(prompt), parse_settings(settings))

    def _item_parts(self, item: PromptParts | str | Mapping[str, Any]) -> PromptParts:
        if isinstance(item, (str, PromptParts)):
            return self.as_parts(item)
        return self.prompt_parts(item["question"], item.get("passages"), item.get("k"))

    def _generation_kwargs(self, settings: GenerationSettings,
                           first_ids: Sequence[torch.Tensor | None] = ()) -> dict[str, Any]:
        sample = settings.temperature > 0
        eos = self.inputs.eos_token_ids()
        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens or None,
            do_sample=sample,
            temperature=settings.temperature if sample else None,
            top_p=settings.top_p if sample else None,
            top_k=0 if sample else None,
            eos_token_id=eos or None,
            pad_token_id=self.pad_token_id,
            stop_strings=list(settings.stop) or None,
        )
        # generate() needs the tokenizer to match stop strings against token ids.
        kwargs: dict[str, Any] = {"generation_config": config}
        if settings.stop:
            kwargs["tokenizer"] = self.tokenizer
        if any(ids is not None for ids in first_ids):
            kwargs["prefix_allowed_tokens_fn"] = self._first_token_rule(first_ids)
        return kwargs

    def heal(self, parts: PromptParts) -> tuple[PromptParts, str, torch.Tensor | None]:
        """The prompt generation feeds for ``parts``, the trailing spaces healed off it and the ids its first new
        token may take (``""`` and ``None`` when nothing is healed; see ``spring_core.healing``)."""
        return heal_for_model(parts, self.tokenizer, self._output_rows())

    def _output_rows(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def _first_token_rule(self, first_ids: Sequence[torch.Tensor | None],
                          ) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """``generate``'s ``prefix_allowed_tokens_fn`` for healed prompts: row ``i``'s first token is one of
        ``first_ids[i]``; later tokens, and rows not healed (``None``), are free. Healed prompts hold a block, so
        ``generate`` runs on ``inputs_embeds`` and hands over only the new ids."""
        every = torch.arange(self._output_rows(), device=self.device)
        first = {row: ids.to(self.device) for row, ids in enumerate(first_ids) if ids is not None}

        def allowed(row: int, ids: torch.Tensor) -> torch.Tensor:
            return first[row] if ids.shape[-1] == 0 and row in first else every

        return allowed

    def _generate_parts(self, parts: Sequence[PromptParts], settings: GenerationSettings) -> list[Generation]:
        healed = [self.heal(p) for p in parts]
        encoded = [self.encode(fed) for fed, _, _ in healed]
        with torch.inference_mode(), _seeded(settings.seed):
            inputs = self.model_inputs(encoded)
            kwargs = self._generation_kwargs(settings, [first for _, _, first in healed])
            output = self.model.generate(**inputs, **kwargs)
        if "input_ids" in inputs:  # generate() returns prompt + new tokens for input_ids, only new ones for embeds
            output = output[:, inputs["input_ids"].shape[1]:]
        rows = zip(parts, healed, encoded, output, strict=True)
        return [self._finish(part, ids, row.tolist(), settings, spaces) for part, (_, spaces, _), ids, row in rows]

    def _finish(self, part: PromptParts, prompt_ids: list[int], new_ids: list[int],
                settings: GenerationSettings, spaces: str = "") -> Generation:
        eos_ids = self.eos_ids()
        generated: list[int] = []
        finish = "length"
        for token in new_ids:
            generated.append(token)
            if token in eos_ids:
                finish = "stop"
                break
        text, stopped = cut_at_stop(self._decode(generated, spaces), settings.stop)
        if stopped:
            # A batch pads a row once its stop string is complete: count only the tokens up to that point.
            generated = generated[: self._tokens_until_stop(generated, settings.stop, spaces)]
        usage = Usage(prompt_tokens=len(prompt_ids) - part.k, completion_tokens=len(generated), virtual_tokens=part.k)
        return Generation(text=text, usage=usage, finish_reason="stop" if stopped else finish, prompt=part.render())

    def _decode(self, ids: list[int], spaces: str = "") -> str:
        """The text of generated ``ids``, without the ``spaces`` a healed prompt left to its first token."""
        return visible(self.tokenizer.decode(ids, skip_special_tokens=True), spaces)

    def _tokens_until_stop(self, generated: list[int], stops: Sequence[str], spaces: str = "") -> int:
        """The length of the shortest prefix of ``generated`` whose text contains a stop string."""
        return tokens_until_stop(generated, stops, lambda ids: self._decode(ids, spaces))

    def _stream_parts(self, parts: PromptParts, settings: GenerationSettings) -> GenerationStream:
        fed, spaces, first = self.heal(parts)
        prompt_ids = self.encode(fed)
        with torch.inference_mode():  # no autograd history for the spliced embeddings
            inputs = self.model_inputs([prompt_ids])
        streamer = _QueueStreamer()
        cancelled = threading.Event()
        kwargs = self._generation_kwargs(settings, [first])
        kwargs["stopping_criteria"] = StoppingCriteriaList([_CancelCriteria(cancelled)])

        def run() -> None:
            try:
                with torch.inference_mode(), _seeded(settings.seed):
                    self.model.generate(**inputs, streamer=streamer, **kwargs)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                streamer.fail(exc)

        # The worker runs in a copy of the caller's context, so per-call state (active document adapters) follows.
        worker = threading.Thread(target=contextvars.copy_context().run, args=(run,), name="spring-rag-stream",
                                  daemon=True)
        worker.start()
        stream = GenerationStream()

        def finish(raw_ids: list[int]) -> None:
            stream.result = self._finish(parts, prompt_ids, raw_ids, settings, spaces)

        stream._deltas = self._deltas(streamer, worker, cancelled, settings, finish, spaces)
        return stream

    def _deltas(self, streamer: _QueueStreamer, worker: threading.Thread, cancelled: threading.Event,
                settings: GenerationSettings, finish: Callable[[list[int]], None], spaces: str) -> Iterator[str]:
        eos_ids = self.eos_ids()
        generated: list[int] = []
        emitted = 0
        try:
            for token in streamer:
                if token in eos_ids:
                    finish([*generated, token])
                    break
                generated.append(token)
                text = self._decode(generated, spaces)
                cut, stopped = cut_at_stop(text, settings.stop)
                if stopped:
                    finish(generated)
                    if len(cut) > emitted:
                        yield cut[emitted:]
                    return
                # Trailing U+FFFD is an incomplete multi-byte character: wait for its other bytes.
                safe = min(len(text) - _held_back(text, settings.stop), len(text.rstrip("\ufffd")))
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
            else:
                finish(generated)
            text = self._decode(generated, spaces)
            if len(text) > emitted:
                yield text[emitted:]
        finally:
            cancelled.set()
            worker.join()


class GenerationStream(Iterator[str]):
    """Text deltas of one streamed generation.

    Iterate it for the deltas; once it is exhausted, ``result`` holds the full ``Generation`` (text, usage,
    finish reason), exactly as ``generate`` would have returned it. ``close()`` stops generation early.

    Example:
        >>> stream = sm.stream("Who founded X?", passages=["..."], k=10)     # doctest: +SKIP
        >>> text = "".join(stream); stream.result.usage                       # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.result: Generation | None = None
        self._deltas: Iterator[str] = iter(())

    def __next__(self) -> str:
        return next(self._deltas)

    def close(self) -> None:
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()


def _check_adapter(tokens: VirtualTokens | None, model: Any) -> None:
    """SPRING+ tokens were trained on a LoRA-adapted model: refuse them on a model without that LoRA merged."""
    adapter = tokens.manifest.get("adapter") if tokens is not None else None
    if adapter and getattr(model, "spring_rag_adapter", None) != adapter.get("sha256"):
        raise ModelMismatchError(
            "these virtual tokens were trained on top of a LoRA (SPRING+), which this model does not carry; load "
            "them with spring_train.adapters.load_trained(model_name, artifact_folder), which merges the LoRA"
        )


def parse_settings(settings: Mapping[str, Any]) -> GenerationSettings:
    """``GenerationSettings`` from keyword settings; an unknown name raises ``TypeError`` naming the known ones."""
    known = {"max_new_tokens", "min_new_tokens", "temperature", "top_p", "seed", "stop"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown generation setting(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
    values = dict(settings)
    stop = values.get("stop")
    values["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return GenerationSettings(**values)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could be the start of a stop string (not safe to emit yet)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed sampling for one call without disturbing the caller's global RNG state."""
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _QueueStreamer(BaseStreamer):
    """Receives token ids from ``generate`` in a worker thread and hands them to the consuming thread."""

    _DONE = object()

    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt ids (empty for inputs_embeds)
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self._queue.put(int(token))

    def end(self) -> None:
        self._queue.put(self._DONE)

    def fail(self, exc: BaseException) -> None:
        self._queue.put(exc)

    def __iter__(self) -> Iterator[int]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class _CancelCriteria(StoppingCriteria):
    """Stops generation when the consumer of a stream goes away."""

    def __init__(self, cancelled: threading.Event):
        self.cancelled = cancelled

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancelled.is_set(), dtype=torch.bool, device=input_ids.device)
