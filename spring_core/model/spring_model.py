"""SpringModel: a frozen Hugging Face causal LM that reads virtual tokens ``[r1]..[rk]`` at a block.

A prompt is a ``PromptParts``: text before the block, ``k``, text after it. The virtual tokens get ids past the
base vocabulary (``vocab_rows + i``); before the forward pass those ids are replaced by rows of the
``VirtualTokens`` table in ``inputs_embeds``, every other id goes through the base embedding. A prompt with
``k=0`` (or a plain string) is passed to the base model as plain ``input_ids``, so its logits are bit-identical to
the untouched model's. Text is never searched for markers: ``[r1]`` inside a question, passage or prompt string is
ordinary text. The lm_head has no rows for virtual ids, so they can never be generated.

Example:
    >>> from spring_core import SpringModel
    >>> sm = SpringModel.from_pretrained("./my-llama", tokens="my-tokens/")    # or "smollm2-135m", a hub id
    >>> out = sm.generate("Who founded X?", passages=["X was founded by Y."], k=10, max_new_tokens=8)
    >>> out.usage.virtual_tokens, out.prompt.count("[r")        # SmolLM2 with trained tokens answers 'Y'
    (10, 10)
    >>> "".join(sm.stream("Who founded X?", passages=["X was founded by Y."], k=10, max_new_tokens=8)) == out.text
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from spring_core import options
from spring_core.errors import ModelMismatchError, OptionError
from spring_core.generation import GenerationStream, Runner, rag_sequence, rag_token, stream_generation
from spring_core.model.healing import Healed
from spring_core.model.inputs import InputLayer
from spring_core.model.loading import DEFAULT_MODEL, load_model, model_display_name
from spring_core.model.tokens import VirtualTokens
from spring_core.prompts.layouts import build_prompt
from spring_core.types import Generation, GenerationSettings, Passage, PromptParts

__all__ = ["SpringModel"]


class SpringModel:
    """A base causal LM, its tokenizer and (optionally) a table of SPRING virtual tokens.

    Every public method checks its arguments once, through ``spring_core.options``, and raises an ``OptionError``
    (a ``SpringError``) that names the bad argument; generation itself runs in ``spring_core.generation``.

    Args:
        model: a Hugging Face causal LM; its weights are only read, never written.
        tokenizer: its tokenizer (left untouched; markers are handled by spring-rag, not added to it).
        tokens: a ``VirtualTokens`` table made for this model, a path to an artifact folder, or ``None`` for the
            plain base model.
        layout: ``"raw"`` (the paper's completion prompt) or ``"chat"`` (the chat template's user turn); by
            default the layout the tokens were trained with, else ``"raw"``.
    """

    def __init__(self, model: Any, tokenizer: Any, tokens: VirtualTokens | str | Path | None = None, *,
                 layout: str | None = None, inputs: InputLayer | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = model_display_name(model)
        self.inputs = inputs if inputs is not None else InputLayer(model, tokenizer)
        self.runner = Runner(model, tokenizer, self.inputs)
        self.tokens = tokens  # checked, and handed to the runner (see the setter)
        default = self.tokens.layout if self.tokens is not None else "raw"
        self.layout = options.choice("layout", default if layout is None else layout, options.LAYOUTS)
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
        """A SpringModel over the same base model, tokenizer and input layer (nothing is copied or computed again)
        with other virtual tokens."""
        return SpringModel(self.model, self.tokenizer, tokens, layout=layout, inputs=self.inputs)

    @property
    def tokens(self) -> VirtualTokens | None:
        """The virtual-token table (``None``: the plain base model). Assigning a table (or an artifact folder)
        checks it against the model, as the constructor does, and sets ``n``."""
        return self._tokens

    @tokens.setter
    def tokens(self, tokens: VirtualTokens | str | Path | None) -> None:
        if isinstance(tokens, (str, Path)):
            tokens = VirtualTokens.load(tokens, model=self.model)
        elif tokens is not None:
            tokens.check_compatible(self.model)
        _check_adapter(tokens, self.model)
        self._tokens = tokens
        self.n = int(tokens.weight.shape[0]) if tokens is not None else 0  # how many are loaded (0: none)
        self.runner.table = tokens.weight if tokens is not None else None

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    def __repr__(self) -> str:
        return f"SpringModel(model={self.name!r}, n={self.n}, layout={self.layout!r})"

    # ----- prompts -------------------------------------------------------------------------------------------

    def prompt_parts(self, question: Any, passages: Any = None, k: Any = None) -> PromptParts:
        """The stored layout for a question and its passages, with ``k`` (default: all ``n``) virtual tokens.

        What the question and passages say is text only: a marker-like string in them is never a virtual token.
        """
        return self._parts(options.question(question), options.passages(passages), self.check_k(k))

    def _parts(self, question: str, passages: Sequence[Passage], k: int) -> PromptParts:
        return build_prompt(question, passages, k, layout=self.layout, tokenizer=self.tokenizer)

    def check_k(self, k: Any) -> int:
        """``k`` if ``0 <= k <= n`` (``None``: ``n``), else a ``MarkerError`` saying what range is allowed."""
        return options.virtual_token_count(self.n if k is None else k, self.n)

    def as_parts(self, prompt: Any) -> PromptParts:
        """A finished prompt as ``PromptParts``: a string is plain text (no block, whatever it contains); the
        block's ``k`` is checked against ``n``."""
        parts = options.prompt(prompt)
        self.check_k(parts.k)
        return parts

    # ----- the input layer (spring_core.model.inputs) --------------------------------------------------------------

    def encode(self, parts: PromptParts) -> list[int]:
        """Token ids of a prompt with exactly one BOS; virtual token ``[ri]`` is the id ``vocab_rows + i - 1``.

        With ``k == 0`` this is exactly ``tokenizer(prompt)["input_ids"]`` (without special tokens for a prompt
        rendered by a chat template, which holds them already; see ``spring_core.model.inputs``).
        """
        return self.inputs.encode(parts)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``inputs_embeds`` for ids that may include virtual ids (differentiable w.r.t. the token table)."""
        return self.inputs.embed(input_ids, self.runner.table)

    def model_inputs(self, batch: Sequence[Sequence[int]], *, positions: bool = False) -> dict[str, torch.Tensor]:
        """Left-padded model inputs: ``input_ids`` when no virtual token is present, else ``inputs_embeds``
        (plus ``position_ids`` that follow the mask, with ``positions``)."""
        return self.inputs.batch(batch, self.runner.table, positions=positions)

    def eos_ids(self) -> set[int]:
        """The ids that end a generation (the model's generation config first, else the tokenizer's eos)."""
        return set(self.inputs.eos_token_ids)

    def heal(self, parts: PromptParts) -> Healed:
        """The prompt generation feeds for ``parts``, with trailing spaces healed (``spring_core.model.healing``)."""
        return self.inputs.heal(parts)

    @torch.inference_mode()
    def logits(self, prompt: PromptParts | str) -> torch.Tensor:
        """Next-token logits over the prompt, ``[1, length, vocab]`` (virtual tokens spliced in at the block)."""
        inputs = self.model_inputs([self.encode(self.as_parts(prompt))])
        return self.model(**inputs).logits

    # ----- generation ----------------------------------------------------------------------------------------

    def generate(self, question: Any, passages: Any = None, k: Any = None, *, decoding: str = "stuff",
                 scores: Sequence[float] | None = None, weight_temperature: float = 1.0,
                 **settings: Any) -> Generation:
        """Answer ``question`` from ``passages`` with ``k`` virtual tokens (default all ``n``) in the stored layout.

        ``decoding``: ``stuff`` (all passages in one prompt, the default), or marginal decoding over the passages
        read one by one (``rag-token``, ``rag-sequence``, ``rag-sequence-fast``; see
        ``spring_core.generation.marginal``), weighted by ``softmax(scores / weight_temperature)`` (uniform
        without ``scores``). Settings: ``max_new_tokens`` (64), ``min_new_tokens`` (0), ``temperature``
        (0 = greedy), ``top_p``, ``seed``, ``stop`` (strings).
        """
        return self.answer(options.question(question), options.passages(passages), self.check_k(k),
                           options.choice("decoding", decoding, options.DECODINGS),
                           options.generation_settings(settings), scores=scores, weight_temperature=weight_temperature)

    def answer(self, question: str, passages: Sequence[Passage], k: int, decoding: str, settings: GenerationSettings,
               *, scores: Sequence[float] | None = None, weight_temperature: float = 1.0) -> Generation:
        """``generate`` for arguments already checked (``spring_core.options``); the in-process backend's entry for
        the marginal decodings."""
        if decoding == "stuff":
            return self.runner.generate([self._parts(question, passages, k)], settings)[0]
        parts = [self._parts(question, [passage], k) for passage in passages]
        scores = [0.0] * len(passages) if scores is None else scores
        if decoding == "rag-token":
            return rag_token(self.runner, parts, scores, settings, weight_temperature=weight_temperature)
        return rag_sequence(self.runner, parts, scores, settings, fast=decoding == "rag-sequence-fast",
                            weight_temperature=weight_temperature)

    def generate_from_prompt(self, prompt: Any, **settings: Any) -> Generation:
        """Generate from a finished prompt: ``PromptParts`` (with its block) or a plain string (no block)."""
        return self.runner.generate([self.as_parts(prompt)], options.generation_settings(settings))[0]

    def generate_batch(self, items: Sequence[PromptParts | str | Mapping[str, Any]], *, batch_size: int = 8,
                       **settings: Any) -> list[Generation]:
        """Generate for many prompts at once (left padding); greedy results equal one-by-one calls.

        Each item is a prompt (``PromptParts`` or a plain string, as for ``generate_from_prompt``) or a mapping
        with ``question`` and optional ``passages`` and ``k`` (as for ``generate``).
        """
        size = options.batch_size(batch_size)
        parsed = options.generation_settings(settings)
        prompts = options.items("items", items, "prompts or {'question', 'passages', 'k'} mappings")
        parts = [self._item_parts(i, item) for i, item in enumerate(prompts)]
        return [result for start in range(0, len(parts), size)
                for result in self.runner.generate(parts[start:start + size], parsed)]

    def stream(self, question: Any, passages: Any = None, k: Any = None, *, decoding: str = "stuff",
               scores: Sequence[float] | None = None, weight_temperature: float = 1.0,
               **settings: Any) -> GenerationStream:
        """Yield the answer as text deltas; joined they equal ``generate(...).text``.

        Once the stream is exhausted its ``result`` is the same ``Generation`` (usage, finish reason) that
        ``generate`` returns. The marginal modes settle the answer only at the end (RAG-Sequence compares whole
        candidates), so they yield it as one delta.
        """
        return self.answer_stream(options.question(question), options.passages(passages), self.check_k(k),
                                  options.choice("decoding", decoding, options.DECODINGS),
                                  options.generation_settings(settings), scores=scores,
                                  weight_temperature=weight_temperature)

    def answer_stream(self, question: str, passages: Sequence[Passage], k: int, decoding: str,
                      settings: GenerationSettings, *, scores: Sequence[float] | None = None,
                      weight_temperature: float = 1.0) -> GenerationStream:
        """``stream`` for arguments already checked (``spring_core.options``)."""
        if decoding != "stuff":
            return GenerationStream.of(self.answer(question, passages, k, decoding, settings, scores=scores,
                                                   weight_temperature=weight_temperature))
        return stream_generation(self.runner, self._parts(question, passages, k), settings)

    def stream_from_prompt(self, prompt: Any, **settings: Any) -> GenerationStream:
        """Streaming twin of ``generate_from_prompt``."""
        return stream_generation(self.runner, self.as_parts(prompt), options.generation_settings(settings))

    def _item_parts(self, index: int, item: Any) -> PromptParts:
        if isinstance(item, (str, PromptParts)):
            return self.as_parts(item)
        if not isinstance(item, Mapping) or "question" not in item:
            raise OptionError(f"items[{index}] must be a prompt (a string or PromptParts) or a mapping with "
                              f"'question' (and optional 'passages', 'k'), got {item!r:.80}")
        return self.prompt_parts(item["question"], item.get("passages"), item.get("k"))


def _check_adapter(tokens: VirtualTokens | None, model: Any) -> None:
    """SPRING+ tokens were trained on a LoRA-adapted model: refuse them on a model without that LoRA merged."""
    adapter = tokens.manifest.get("adapter") if tokens is not None else None
    if adapter and getattr(model, "spring_rag_merged_lora", None) != adapter.get("sha256"):
        raise ModelMismatchError(
            "these virtual tokens were trained on top of a LoRA (SPRING+), which this model does not carry; load "
            "them with spring_core.artifacts.registry.load_spring_model(model_name, artifact_folder), which "
            "merges the LoRA"
        )
