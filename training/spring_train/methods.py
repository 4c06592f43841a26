"""What each ``--method`` trains: SPRING tokens, a LoRA, a prefix, or SPRING+ (tokens on top of a LoRA).

Every method is a ``TrainTarget``: a module that takes a left-padded ``Batch`` and returns the summed answer loss,
asks the base model for logits at the answer positions only, knows which parameters it trains, and exports
itself as an artifact folder. The base model's own parameters are always frozen.

Example:
    >>> config = TrainConfig(method="spring", model="./my-llama", data=["train.jsonl"], out="my-run", n=10)
    >>> target = build_target(config, model, tokenizer)
    >>> target.trainable_count()          # n x hidden size: 10 x 64 here, 50 x 576 for SPRING on SmolLM2
    640
    >>> any(parameter.requires_grad for parameter in model.parameters())   # the base model stays frozen
    False
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from spring_core.artifacts.registry import merge_lora
from spring_core.errors import ArtifactError
from spring_core.model.inputs import position_ids
from spring_core.model.spring_model import SpringModel
from spring_core.model.tokens import VirtualTokens, check_table_values
from spring_train.adapters import SPRING_PLUS_LORA, adapter_sha256, save_peft_artifact
from spring_train.batching import answer_loss_sum
from spring_train.config import ConfigError, TrainConfig

PEFT_TRAINABLE_MARKERS = ("lora_", "prompt_encoder")


class TrainTarget(torch.nn.Module):
    """The module the trainer optimises: a frozen base model plus the method's trainable parameters."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained parameters only (what a checkpoint stores), on CPU."""
        return {name: p.detach().cpu().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        if set(params) != set(state):
            raise ConfigError("the checkpoint's trained parameters do not match this method's; was --method changed?")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def divergence(self) -> str | None:
        """Why the trained parameters are no longer usable (a diverged run), or ``None`` while they are."""
        for name, param in self.named_parameters():
            if param.requires_grad and not bool(torch.isfinite(param.detach()).all()):
                return f"{name} has NaN or infinite values"
        return None

    def export(self, folder: Path, **manifest_fields: Any) -> Path:
        raise NotImplementedError


class SpringTarget(TrainTarget):
    """SPRING: only the ``n x d`` token table trains; prompts are spliced exactly as ``SpringModel`` does."""

    def __init__(self, model: Any, tokenizer: Any, tokens: VirtualTokens, base_lora: Path | None = None):
        super().__init__()
        self.model = model
        self.tokens = tokens
        self.spring = SpringModel(model, tokenizer, tokens)
        self.base_lora = base_lora
        freeze(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeds = self.spring.embed(input_ids)
        # Left padding: positions follow the mask, so a row's loss never depends on its batch mates (GPT-2 and
        # other absolute-position models would otherwise train the tokens at shifted positions).
        logits = self.model(inputs_embeds=embeds, attention_mask=attention_mask,
                            position_ids=position_ids(attention_mask), logits_to_keep=labels.shape[1] + 1).logits
        return answer_loss_sum(logits, labels)

    def divergence(self) -> str | None:
        """The checks ``VirtualTokens.load`` applies to a table (finite, of a magnitude an embedding can have), so a
        table that passes here is one the artifact's readers accept."""
        try:
            check_table_values(self.tokens.weight.detach(), "the token table")
        except ArtifactError as exc:
            return str(exc).split("; ")[0]  # what is wrong; the loader's remedy is for a damaged file
        return None

    def export(self, folder: Path, **manifest_fields: Any) -> Path:
        if self.base_lora is not None:
            # The LoRA goes in first; the manifest that refers to it is written last.
            shutil.copytree(self.base_lora, folder / SPRING_PLUS_LORA, dirs_exist_ok=True)
            manifest_fields["adapter"] = {"path": SPRING_PLUS_LORA, "sha256": adapter_sha256(self.base_lora)}
        return self.tokens.save(folder, **manifest_fields)


class PeftTarget(TrainTarget):
    """LoRA or prefix-tuning through peft; peft freezes the base model and trains its adapter."""

    def __init__(self, peft_model: Any, method: str):
        super().__init__()
        self.model = peft_model
        self.method = method
        for name, param in peft_model.named_parameters():
            if param.requires_grad and not any(marker in name for marker in PEFT_TRAINABLE_MARKERS):
                raise AssertionError(f"base parameter {name} would be trained by {method}")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        positions = {"position_ids": position_ids(attention_mask)} if self.method == "lora" else {}  # peft's
        # prompt learning ignores position ids with a warning
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=labels.shape[1] + 1,
                            **positions).logits
        return answer_loss_sum(logits, labels)

    def export(self, folder: Path, **manifest_fields: Any) -> Path:
        return save_peft_artifact(self.model, folder, method=self.method, **manifest_fields)


def freeze(model: Any) -> None:
    """Freeze every base parameter, and prove it."""
    model.requires_grad_(False)
    model.eval()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if trainable:
        raise AssertionError(f"base parameters still trainable: {trainable[:5]}")


def _initial_tokens(config: TrainConfig, model: Any, tokenizer: Any) -> VirtualTokens:
    """The paper's prompt-based init (``--init-text`` or its instruction), or a warm start from an artifact."""
    if config.init_tokens:
        start = VirtualTokens.from_artifact(config.init_tokens, model, tokenizer=tokenizer)
        if (start.n, start.layout) != (config.n, config.layout):
            raise ConfigError(f"--init-tokens {config.init_tokens} holds n = {start.n} tokens in the {start.layout!r} "
                              f"layout; pass --n {start.n} --layout {start.layout}")
        return start
    init = {"n": config.n, "tokenizer": tokenizer, "layout": config.layout}
    if config.init_text:
        return VirtualTokens.from_text(model, text=config.init_text, **init)
    return VirtualTokens.from_text(model, **init)


def build_target(config: TrainConfig, model: Any, tokenizer: Any) -> TrainTarget:
    """The ``TrainTarget`` for ``config.method`` over ``model`` (a copy the trainer owns)."""
    if config.trains_tokens:
        base_lora = None
        if config.method == "spring+":
            base_lora = Path(config.base_lora or "")
            model = merge_lora(model, base_lora)
        return SpringTarget(model, tokenizer, _initial_tokens(config, model, tokenizer), base_lora)

    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    freeze(model)
    if config.method == "lora":
        peft_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                 target_modules=list(config.lora_targets), lora_dropout=0.0, task_type="CAUSAL_LM")
    else:
        peft_config = PrefixTuningConfig(num_virtual_tokens=config.prefix_tokens, task_type="CAUSAL_LM")
    return PeftTarget(get_peft_model(model, peft_config), config.method)
