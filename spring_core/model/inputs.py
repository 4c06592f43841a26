"""The one input layer: text -> ids -> ``inputs_embeds`` for inference, training, decoding and import.

Everything that turns a prompt into what the model reads goes through ``InputLayer``, so every family sees the
same rules:

* **Embedding space.** Virtual tokens live where the embedding *module's output* lives. Gemma multiplies
  ``weight[ids]`` by ``sqrt(hidden)`` inside its embedding module, so rows read from ``.weight`` would be in the
  wrong space; ``token_embeddings`` returns the module's output, and ``embedding_scale`` measures the
  module/weight ratio for imports whose rows are raw weights (refused when that ratio is not one scalar).
* **Exactly one BOS.** ``encode`` adds the tokenizer's special tokens around the prompt unless the prompt says it
  already holds them (``PromptParts.special_tokens`` is False for chat-template renders) or already starts with
  them.
* **Pad and eos ids**, with a clear ``InputError`` when batching needs a pad id and the model has neither.
* **Position ids under left padding**: they follow the attention mask, so a row's result never depends on its
  batch mates (absolute-position models such as GPT-2 need them).
* **The embedding width**: the table's width is the embedding output's (OPT-350m: 512), not ``hidden_size``.

Example:
    >>> from spring_core.types import PromptParts
    >>> layer = InputLayer(model, tokenizer)
    >>> ids = layer.encode(PromptParts("[1] X is Y.\\n\\n", 2, "Question: Who?\\nAnswer:"))
    >>> batch = layer.batch([ids], table=tokens.weight)
    >>> sorted(batch), batch["inputs_embeds"].shape == (1, len(ids), layer.width)
    (['attention_mask', 'inputs_embeds'], True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spring_core.errors import ContextWindowError, InputError
from spring_core.model.healing import Healed, allowed_first_ids, heal
from spring_core.types import PromptParts

_SCALE_SAMPLE_ROWS = 64


class InputLayer:
    """Text -> ids -> ``inputs_embeds`` for one base model and its tokenizer (nothing of either is written).

    Args:
        model: a Hugging Face causal LM (or anything with ``get_input_embeddings`` and ``generation_config``).
        tokenizer: its tokenizer.

    Virtual token ``[ri]`` has the id ``vocab_rows + i - 1``; the side table passed to ``embed`` / ``batch``
    supplies its row.

    Example:
        >>> layer = InputLayer(model, tokenizer)
        >>> layer.width, layer.embedding_scale()    # Gemma 3 270M: (640, 25.298221281347036)
        (64, 1.0)
    """

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        # read once, here: the model and tokenizer are never changed by spring-rag
        self.embedding: torch.nn.Module = model.get_input_embeddings()
        self.vocab_rows = int(self.embedding.weight.shape[0])
        output = model.get_output_embeddings()
        self.output_rows = int(output.weight.shape[0]) if output is not None else self.vocab_rows
        """How many ids the model can emit (its lm_head's rows): virtual ids lie past them."""
        self.context_window = context_window(model)
        """The longest sequence the model reads (``max_position_embeddings``), ``None`` when it does not say."""
        self.eos_token_ids = eos_token_ids(model, tokenizer)
        """End-of-sequence ids: the model's generation config first (it may list several), else the tokenizer's."""
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else None)
        """The tokenizer's pad id, else the first eos id, else ``None`` (see ``require_pad_token_id``)."""
        self.lead_ids, self.trail_ids = special_token_wrap(tokenizer) if tokenizer is not None else ([], [])
        self._scale: float | None = None
        self._first_ids: dict[str, torch.Tensor] = {}  # healing: spaces -> the ids that may start the answer

    # ----- the embedding module ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def width(self) -> int:
        """The width of the embedding module's output: the width of a virtual-token table for this model."""
        return int(getattr(self.embedding, "embedding_dim", None) or self.embedding.weight.shape[1])

    def token_embeddings(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """What the embedding module outputs for real token ids ``[len(ids), width]`` (detached, on its device)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        with torch.no_grad():
            return self.embedding(ids).detach()

    def embedding_scale(self) -> float:
        """The measured ratio ``embedding(ids) / weight[ids]`` (1.0 for most families, ``sqrt(hidden)`` for Gemma).

        Raises ``InputError`` when the module's output is not one scalar times its weight rows (a projection, a
        learned per-dimension scale): rows stored as raw weights then cannot be mapped into its output space.
        """
        if self._scale is None:
            self._scale = self._measure_scale()
        return self._scale

    def _measure_scale(self) -> float:
        weight = self.embedding.weight.detach()
        ids = torch.linspace(0, self.vocab_rows - 1, steps=min(_SCALE_SAMPLE_ROWS, self.vocab_rows)).long()
        raw = weight[ids.to(weight.device)].float()
        out = self.token_embeddings(ids).float()
        if out.shape != raw.shape:
            raise InputError(
                f"the input embedding module of {type(self.model).__name__} outputs {out.shape[-1]} values per token "
                f"from {raw.shape[-1]}-wide weight rows; rows stored as raw weights cannot be mapped into its output "
                "space. Initialise the tokens from text (VirtualTokens.from_text) instead"
            )
        usable = raw.abs() > 1e-6
        if not bool(usable.any()):
            return 1.0
        ratios = out[usable] / raw[usable]
        scale = float(ratios.median())
        if not torch.allclose(ratios, torch.full_like(ratios, scale), rtol=1e-2, atol=0.0):
            raise InputError(
                f"the input embedding module of {type(self.model).__name__} does not scale its weight rows by one "
                f"number (ratios {float(ratios.min()):.4g}..{float(ratios.max()):.4g}); rows stored as raw weights "
                "cannot be mapped into its output space. Initialise the tokens from text (VirtualTokens.from_text)"
            )
        return scale

    # ----- text -> ids ---------------------------------------------------------------------------------------

    def heal(self, parts: PromptParts) -> Healed:
        """The prompt to feed for ``parts`` with its trailing spaces healed (``spring_core.model.healing``), when some
        id the model can emit starts with them; else ``parts`` as they are."""
        healed, spaces = heal(parts)
        if not spaces:
            return Healed(parts)
        if spaces not in self._first_ids:
            first = allowed_first_ids(self.tokenizer, spaces)
            self._first_ids[spaces] = first[first < self.output_rows]
        first = self._first_ids[spaces]
        return Healed(healed, spaces, first) if len(first) else Healed(parts)

    def encode(self, parts: PromptParts) -> list[int]:
        """Token ids of a ``PromptParts``: ``before``, ``k`` virtual ids, ``after``, with exactly one BOS.

        The tokenizer's special tokens (e.g. a BOS) are added unless ``parts.special_tokens`` is False (a
        chat-template render already holds the template's BOS) or the text already starts with them. With
        ``k == 0`` and no BOS in the text this is exactly ``tokenizer(prompt)["input_ids"]``.
        """
        special = bool(getattr(parts, "special_tokens", True))
        if parts.k == 0:
            ids = list(self.tokenizer(parts.plain_text(), add_special_tokens=special)["input_ids"])
            lead = len(self.lead_ids)
            if special and lead and ids[:2 * lead] == self.lead_ids * 2:
                ids = ids[lead:]  # the text held its own BOS: keep one
            return ids
        before = list(self.tokenizer(parts.before, add_special_tokens=False)["input_ids"])
        after = list(self.tokenizer(parts.after, add_special_tokens=False)["input_ids"])
        virtual = list(range(self.vocab_rows, self.vocab_rows + parts.k))
        if not special:
            return before + virtual + after
        lead = [] if self.lead_ids and before[:len(self.lead_ids)] == self.lead_ids else self.lead_ids
        return lead + before + virtual + after + self.trail_ids

    def prepare(self, parts: PromptParts, max_new_tokens: int = 0) -> tuple[Healed, list[int]]:
        """What generation feeds for ``parts``: the healed prompt (``heal``) and its ids (``encode``), checked
        against the context window with room for ``max_new_tokens`` more (``ContextWindowError`` naming both
        lengths otherwise)."""
        healed = self.heal(parts)
        ids = self.encode(healed.parts)
        window = self.context_window
        if window is not None and len(ids) + max_new_tokens > window:
            raise ContextWindowError(
                f"the prompt is {len(ids)} tokens (virtual tokens included) and the answer may take "
                f"max_new_tokens={max_new_tokens} more, but the model's context window is {window} tokens; "
                "retrieve fewer or shorter passages, truncate the context, or lower max_new_tokens"
            )
        return healed, ids

    # ----- ids -> model inputs -------------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """``inputs_embeds`` for ids that may hold virtual ids, whose rows come from ``table`` (differentiable)."""
        is_virtual = input_ids >= self.vocab_rows
        base = self.embedding(input_ids.masked_fill(is_virtual, 0))
        if table is None or not bool(is_virtual.any()):
            return base
        if table.shape[-1] != base.shape[-1]:
            raise InputError(f"the virtual-token table is {table.shape[-1]} wide but the model's embedding outputs "
                             f"{base.shape[-1]} values per token; these tokens were made for another model")
        rows = table.to(device=base.device, dtype=base.dtype)
        virtual = rows[(input_ids - self.vocab_rows).clamp(min=0, max=rows.shape[0] - 1)]
        return torch.where(is_virtual.unsqueeze(-1), virtual, base)

    def batch(self, sequences: Sequence[Sequence[int]], table: torch.Tensor | None = None, *,
              positions: bool = False) -> dict[str, torch.Tensor]:
        """Left-padded model inputs on the model's device: ``input_ids`` when no virtual id is present, else
        ``inputs_embeds``; plus ``attention_mask`` and, with ``positions``, ``position_ids`` that follow it."""
        input_ids, attention_mask = left_pad(sequences, self.pad_token_id)
        device = self.embedding.weight.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        inputs: dict[str, torch.Tensor]
        if bool((input_ids >= self.vocab_rows).any()):
            inputs = {"inputs_embeds": self.embed(input_ids, table), "attention_mask": attention_mask}
        else:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if positions:
            inputs["position_ids"] = position_ids(attention_mask)
        return inputs

    # ----- special ids ---------------------------------------------------------------------------------------

    def require_pad_token_id(self) -> int:
        """The pad id, or an ``InputError`` saying how to give the tokenizer one."""
        return require_pad(self.pad_token_id, self.tokenizer)


def eos_token_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """End-of-sequence ids: the model's generation config first (it may list several), else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None) if eos is None else eos
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


def context_window(model: Any) -> int | None:
    """The longest sequence ``model`` reads (``max_position_embeddings``), ``None`` when its config does not say."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "max_position_embeddings", None)
    return int(window) if isinstance(window, int) and window > 0 else None


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that follow the mask (0 at each row's first real token), as ``generate`` builds them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of the sequences left-padded to the longest (on CPU).

    Rows of equal length need no pad id; otherwise a missing ``pad_id`` raises ``InputError``.
    """
    if not sequences:
        raise InputError("cannot build a batch of no sequences")
    width = max(len(ids) for ids in sequences)
    if pad_id is None and any(len(ids) != width for ids in sequences):
        raise InputError("this model's tokenizer has neither a pad token nor an eos token, and a batch of prompts "
                         "of different lengths needs one; set tokenizer.pad_token (e.g. to an existing token)")
    input_ids = torch.full((len(sequences), width), 0 if pad_id is None else pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        if ids:
            input_ids[row, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


def require_pad(pad_id: int | None, tokenizer: Any = None) -> int:
    if pad_id is None:
        name = type(tokenizer).__name__ if tokenizer is not None else "the tokenizer"
        raise InputError(f"{name} has neither a pad token nor an eos token, and batching needs one; set "
                         "tokenizer.pad_token (e.g. tokenizer.pad_token = tokenizer.unk_token) before loading")
    return pad_id


def special_token_wrap(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer adds around any text (e.g. a BOS), found by encoding a probe both ways."""
    probe = "spring"
    with_special = list(tokenizer(probe)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return with_special[:start], with_special[start + len(plain):]
    return [], []
