"""The one transformers runner: prompts in, ``Generation``\\ s out, for every decoding mode.

Every path that generates in process comes here: ``stuff`` prompts (one or a left-padded batch), streaming
(``spring_core.generation.streaming``) and the marginal modes (``spring_core.generation.marginal``), so the
generation config, stop strings, end-of-sequence cuts and usage counting exist once (the prompt's healing,
encoding and context-window check are the input layer's: ``InputLayer.prepare``).

**Stop strings are matched on the answer as the caller sees it**: the text of the generated ids without the
spaces that healing moved from the prompt into the first token. ``finish_reason`` is ``"stop"`` when a stop
string or an end-of-sequence id ended the answer, ``"length"`` when ``max_new_tokens`` did.

Example:
    >>> from spring_core.options import generation_settings
    >>> runner = Runner(model, tokenizer, InputLayer(model, tokenizer))
    >>> settings = generation_settings({"max_new_tokens": 8, "stop": ["\\n"]})
    >>> out = runner.generate([PromptParts("Question: 2+2?\\nAnswer:")], settings)[0]   # SmolLM2: ' 4'
    >>> "\\n" in out.text, out.finish_reason in ("stop", "length"), out.usage.completion_tokens <= 8
    (False, True, True)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria

from spring_core.model.healing import Healed, visible
from spring_core.model.inputs import InputLayer
from spring_core.types import Generation, GenerationSettings, PromptParts, Usage


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found.

    Example:
        >>> cut_at_stop("Paris.\\nQuestion:", ["\\nQuestion"])
        ('Paris.', True)
    """
    hits = [text.find(s) for s in stops if s in text]
    return (text[:min(hits)], True) if hits else (text, False)


class Runner:
    """Runs ``model.generate`` for one base model, its tokenizer, input layer and (optional) virtual-token table.

    Args:
        model: a Hugging Face causal LM (only read).
        tokenizer: its tokenizer.
        inputs: the ``InputLayer`` that turns prompts into ids and ``inputs_embeds``.
        table: the virtual-token table, ``[n, width]`` (``None``: no tokens); ``SpringModel`` keeps it current.
    """

    def __init__(self, model: Any, tokenizer: Any, inputs: InputLayer, table: torch.Tensor | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.inputs = inputs
        self.table = table

    # ----- generation --------------------------------------------------------------------------------------

    def generate(self, parts: Sequence[PromptParts], settings: GenerationSettings) -> list[Generation]:
        """One left-padded ``generate`` call over ``parts``; greedy results equal one-by-one calls."""
        prepared = [self.inputs.prepare(p, settings.max_new_tokens) for p in parts]
        rows = self.generate_ids([ids for _, ids in prepared], settings, [h for h, _ in prepared])
        return [self.finish(row, settings, healed.spaces, prompt_tokens=len(ids) - part.k, virtual_tokens=part.k,
                            prompt=part.render())
                for part, (healed, ids), row in zip(parts, prepared, rows, strict=True)]

    def generate_ids(self, prompts: Sequence[Sequence[int]], settings: GenerationSettings,
                     healed: Sequence[Healed] = (), processors: Sequence[LogitsProcessor] = ()) -> list[list[int]]:
        """Each prompt's new ids, cut after its first end-of-sequence id or at the end of its first stop string."""
        spaces = [h.spaces for h in healed] or [""] * len(prompts)
        with torch.inference_mode(), sampling(settings) if settings.temperature > 0 else contextlib.nullcontext():
            inputs = self.inputs.batch(prompts, self.table)
            # generate() returns the prompt's ids before the new ones when it reads ids (none for embeddings)
            width = int(inputs["input_ids"].shape[1]) if "input_ids" in inputs else 0
            kwargs = self.generate_kwargs(settings, healed, spaces, width, processors)
            output = self.model.generate(**inputs, **kwargs)
        output = output[:, width:]
        return [self.cut(row.tolist(), settings.stop, row_spaces) for row, row_spaces in zip(output, spaces,
                                                                                             strict=True)]

    def generate_kwargs(self, settings: GenerationSettings, healed: Sequence[Healed] = (),
                        spaces: Sequence[str] = (), offset: int = 0,
                        processors: Sequence[LogitsProcessor] = ()) -> dict[str, Any]:
        """``generate``'s keyword arguments for ``settings``: its config, the first-token rule of healed rows and
        the stop-string criterion."""
        sample = settings.temperature > 0
        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens or None,
            do_sample=sample,
            temperature=settings.temperature if sample else None,
            top_p=settings.top_p if sample else None,
            top_k=0 if sample else None,
            eos_token_id=list(self.inputs.eos_token_ids) or None,
            pad_token_id=self.inputs.pad_token_id,
        )
        kwargs: dict[str, Any] = {"generation_config": config, "logits_processor": LogitsProcessorList(processors)}
        if settings.stop:
            kwargs["stopping_criteria"] = [VisibleStop(self.decode, settings.stop, list(spaces), offset)]
        if any(h.first_ids is not None for h in healed):
            # healed rows: the first new token is one of the row's allowed ids; later tokens, and rows not
            # healed, are free. Healed prompts hold a block, so generate() hands over only the new ids.
            device = self.inputs.embedding.weight.device
            every = torch.arange(self.inputs.output_rows, device=device)
            first = {row: h.first_ids.to(device) for row, h in enumerate(healed) if h.first_ids is not None}

            def allowed(row: int, ids: torch.Tensor) -> torch.Tensor:
                return first[row] if ids.shape[-1] == 0 and row in first else every

            kwargs["prefix_allowed_tokens_fn"] = allowed
        return kwargs

    # ----- new ids -> the answer ---------------------------------------------------------------------------

    def decode(self, ids: Sequence[int], spaces: str = "") -> str:
        """The answer's text for generated ``ids``: special tokens dropped, and without the ``spaces`` a healed
        prompt left to its first token."""
        return visible(self.tokenizer.decode(list(ids), skip_special_tokens=True), spaces)

    def cut(self, ids: list[int], stops: Sequence[str], spaces: str = "") -> list[int]:
        """``ids`` up to and with the first end-of-sequence id, or up to the token that completes a stop string."""
        ends = [i for i, token in enumerate(ids) if token in self.inputs.eos_token_ids]
        ids = ids[:ends[0] + 1] if ends else ids
        if stops and cut_at_stop(self.decode(ids, spaces), stops)[1]:
            size = next(size for size in range(1, len(ids) + 1)
                        if cut_at_stop(self.decode(ids[:size], spaces), stops)[1])
            ids = ids[:size]
        return ids

    def finish(self, ids: list[int], settings: GenerationSettings, spaces: str = "", *, prompt_tokens: int,
               virtual_tokens: int, prompt: str = "") -> Generation:
        """The ``Generation`` for ids already ``cut``: its text up to a stop string, usage and finish reason."""
        text, stopped = self.decode(ids, spaces), False
        if settings.stop:
            text, stopped = cut_at_stop(text, settings.stop)
        ended = bool(ids) and ids[-1] in self.inputs.eos_token_ids
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(ids), virtual_tokens=virtual_tokens)
        return Generation(text=text, usage=usage, finish_reason="stop" if stopped or ended else "length",
                          prompt=prompt, token_ids=list(ids))


class VisibleStop(StoppingCriteria):
    """Ends a row once the answer as the caller sees it (``Runner.decode``: healed spaces removed) holds a stop
    string; transformers' own ``stop_strings`` would match the raw token text instead."""

    def __init__(self, decode: Callable[[Sequence[int], str], str], stops: Sequence[str], spaces: Sequence[str],
                 offset: int):
        self.decode, self.stops, self.spaces, self.offset = decode, list(stops), list(spaces), offset

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done = [cut_at_stop(self.decode(row[self.offset:].tolist(), self._spaces(i)), self.stops)[1]
                for i, row in enumerate(input_ids)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _spaces(self, row: int) -> str:
        return self.spaces[row] if row < len(self.spaces) else ""


_SAMPLING = threading.RLock()
"""Held by every sampling ``generate`` in this process: ``generate`` draws from torch's one global RNG, which all
threads share, so a seeded call's draws are its own only while no other thread samples."""


@contextlib.contextmanager
def sampling(settings: GenerationSettings) -> Iterator[None]:
    """Around one ``generate`` call: for sampling settings, the process-wide sampling lock and, with a ``seed``,
    torch's RNG seeded for this call alone (the caller's global RNG state is restored after). Greedy calls draw
    nothing: they neither wait nor seed, so they still run side by side."""
    if settings.temperature <= 0:
        yield
        return
    with _SAMPLING:
        if settings.seed is None:
            yield
            return
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(settings.seed)
            yield
