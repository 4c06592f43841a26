"""Training examples and batches: prompt ids from ``SpringModel.encode`` plus answer ids, left-padded.

The prompt goes through exactly the code inference uses (text on both sides of the block, virtual ids spliced in),
so the tokens are trained on the same ids they will see. Batches are left-padded: every answer then ends at the
last position, and the loss needs logits only for the last ``L + 1`` positions (``L`` = longest answer).

Example:
    >>> short = build_example(sm, question="Who?", passages=[passage], answer="John Harvard", k=10)
    >>> long = build_example(sm, question=question, passages=[passage, other], answer="John Harvard", k=10)
    >>> batch = collate([short, long], pad_id=0)
    >>> batch.input_ids.shape[0], batch.input_ids.shape[1] == len(long.input_ids)   # left-padded to the longest
    (2, True)
    >>> batch.labels.shape[1] == short.answer_length, batch.answer_tokens == 2 * short.answer_length
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spring_core.model.inputs import left_pad
from spring_core.model.spring_model import SpringModel
from spring_core.prompts.templates import RagTemplate, render_template

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One training sequence: prompt ids (virtual ids included) followed by the answer ids."""

    input_ids: list[int]
    answer_length: int


@dataclass
class Batch:
    """Left-padded ids and mask, and labels for the last ``labels.shape[1]`` positions (``IGNORE`` elsewhere)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def answer_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def answer_ids(tokenizer: Any, answer: str, layout: str, max_tokens: int) -> list[int]:
    """The target: the answer (after a space in the raw layout, which ends with ``Answer:``) and end-of-sequence."""
    text = f" {answer.strip()}" if layout == "raw" else answer.strip()
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])[:max_tokens]
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def build_example(sm: SpringModel, *, question: str, passages: Sequence[Any], answer: str, k: int,
                  max_answer_tokens: int = 32, template: RagTemplate | None = None) -> Example:
    """Encode ``passages + [r1..rk] + question`` in ``sm``'s layout (or in ``template``), then the answer."""
    if template is None:
        parts, layout = sm.prompt_parts(question, passages, k), sm.layout
    else:
        sm.check_k(k)
        # healed as at inference: "Answer: " is read as "Answer:" and the answer brings its space
        parts = sm.heal(render_template(template, question, passages, k, sm.tokenizer)).parts
        # a completion prompt that ends in a cue ("Answer:") is answered after a space, as in the raw layout
        layout = "chat" if template.is_chat or parts.plain_text()[-1:].isspace() else "raw"
    target = answer_ids(sm.tokenizer, answer, layout, max_answer_tokens)
    return Example(sm.encode(parts) + target, len(target))


def collate(examples: Sequence[Example], pad_id: int | None) -> Batch:
    """Left-pad to the longest sequence; labels cover the last ``max answer length`` positions.

    ``pad_id`` may be ``None`` (a model with neither pad nor eos) only when every sequence has the same length;
    otherwise ``InputError`` says how to give the tokenizer a pad token.
    """
    input_ids, attention_mask = left_pad([e.input_ids for e in examples], pad_id)
    answer_width = max(e.answer_length for e in examples)
    labels = torch.full((len(examples), answer_width), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, answer_width - example.answer_length:] = ids[len(ids) - example.answer_length:]
    return Batch(input_ids, attention_mask, labels)


def answer_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the answer tokens.

    ``logits`` are the model's last ``L + 1`` positions; position ``t`` predicts token ``t + 1``, so the first
    ``L`` of them predict the last ``L`` tokens, which ``labels`` hold.
    """
    predicting = logits[:, :-1, :].float()
    return torch.nn.functional.cross_entropy(
        predicting.reshape(-1, predicting.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
