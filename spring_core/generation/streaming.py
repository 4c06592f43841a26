"""Streaming: ``generate`` runs in a worker thread and the caller iterates text deltas as they come.

The deltas joined equal the text ``Runner.generate`` returns for the same prompt and settings, and the stream's
``result`` is the same ``Generation`` once the stream is exhausted. A delta never ends in the middle of a
multi-byte character or in text that could still become a stop string.

Example:
    >>> from spring_core.options import generation_settings
    >>> settings = generation_settings({"max_new_tokens": 8, "stop": ["\\n"]})
    >>> stream = stream_generation(sm.runner, PromptParts("Question: 2+2?\\nAnswer:"), settings)
    >>> "".join(stream) == stream.result.text    # SmolLM2: ' 4', finish_reason 'stop'
    True
    >>> stream.result.text == sm.runner.generate([PromptParts("Question: 2+2?\\nAnswer:")], settings)[0].text
    True
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from spring_core.generation.runner import Runner, cut_at_stop, sampling
from spring_core.types import Generation, GenerationSettings, PromptParts


class GenerationStream(Iterator[str]):
    """Text deltas of one streamed generation.

    Iterate it for the deltas; once it is exhausted, ``result`` holds the full ``Generation`` (text, usage,
    finish reason), exactly as ``generate`` would have returned it. ``close()`` stops generation early.

    Example:
        >>> stream = GenerationStream.of(Generation("Paris"))
        >>> list(stream), stream.result.text
        (['Paris'], 'Paris')
    """

    def __init__(self, deltas: Iterator[str] | None = None, result: Generation | None = None) -> None:
        self.result = result
        self._deltas: Iterator[str] = iter(()) if deltas is None else deltas

    @classmethod
    def of(cls, generation: Generation) -> GenerationStream:
        """A finished generation as a stream of one delta (its whole text)."""
        return cls(iter([generation.text] if generation.text else []), generation)

    def __next__(self) -> str:
        return next(self._deltas)

    def close(self) -> None:
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()


def stream_generation(runner: Runner, parts: PromptParts, settings: GenerationSettings) -> GenerationStream:
    """Start generating ``parts`` in a worker thread; the stream yields the answer's text deltas."""
    healed, prompt_ids = runner.inputs.prepare(parts, settings.max_new_tokens)
    with torch.inference_mode():  # no autograd history for the spliced embeddings
        inputs = runner.inputs.batch([prompt_ids], runner.table)
    streamer = _QueueStreamer()
    cancelled = threading.Event()
    # stop strings are matched while streaming (the deltas must not pass them), so generate() needs no criterion
    kwargs = runner.generate_kwargs(GenerationSettings(**{**vars(settings), "stop": ()}), [healed], [healed.spaces])
    kwargs["stopping_criteria"] = StoppingCriteriaList([_CancelCriteria(cancelled)])

    def run() -> None:
        try:
            with torch.inference_mode(), sampling(settings):
                runner.model.generate(**inputs, streamer=streamer, **kwargs)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            streamer.fail(exc)

    # The worker runs in a copy of the caller's context, so per-call state (active document adapters) follows.
    worker = threading.Thread(target=contextvars.copy_context().run, args=(run,), name="spring-rag-stream",
                              daemon=True)
    worker.start()
    stream = GenerationStream()

    def finish(raw_ids: list[int]) -> None:
        ids = runner.cut(raw_ids, settings.stop, healed.spaces)
        stream.result = runner.finish(ids, settings, healed.spaces, prompt_tokens=len(prompt_ids) - parts.k,
                                      virtual_tokens=parts.k, prompt=parts.render())

    stream._deltas = _deltas(runner, streamer, worker, cancelled, settings, finish, healed.spaces)
    return stream


def _deltas(runner: Runner, streamer: _QueueStreamer, worker: threading.Thread, cancelled: threading.Event,
            settings: GenerationSettings, finish: Callable[[list[int]], None], spaces: str) -> Iterator[str]:
    eos_ids = set(runner.inputs.eos_token_ids)
    generated: list[int] = []
    emitted = 0
    try:
        for token in streamer:
            generated.append(token)
            if token in eos_ids:
                break
            text = runner.decode(generated, spaces)
            cut, stopped = cut_at_stop(text, settings.stop)
            if stopped:
                if len(cut) > emitted:
                    yield cut[emitted:]
                emitted = len(cut)
                break
            # Trailing U+FFFD is an incomplete multi-byte character: wait for its other bytes.
            safe = min(len(text) - _held_back(text, settings.stop), len(text.rstrip("\ufffd")))
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        finish(generated)
        text = cut_at_stop(runner.decode(generated, spaces), settings.stop)[0]
        if len(text) > emitted:
            yield text[emitted:]
    finally:
        cancelled.set()
        worker.join()


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could be the start of a stop string (not safe to emit yet)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest


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
