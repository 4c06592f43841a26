"""The architecture matrix: tiny random models of every family spring-rag claims, built from configs in seconds.

Each family is a real transformers model class with a config small enough for CPU tests (hidden 64, 2 layers),
paired with a tokenizer trained here on the test sentences. The families differ where spring-rag's input path
can go wrong: tied or untied heads, qkv bias, sliding windows, Gemma's scaled embeddings and hybrid cache, a
tokenizer that adds a BOS, absolute positions (GPT-2, OPT), Conv1D, fused projections, no pad token, and an
embedding narrower than the hidden size (OPT-350m's project_in/out). Nothing is downloaded.

Example:
    >>> model, tokenizer = build("gemma3")              # doctest: +SKIP
    >>> FAMILIES["gpt2"].mlp                             # doctest: +SKIP
    ('mlp.c_fc', 'mlp.c_proj')
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from conftest import CHATML, TRAINING_TEXT

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] "
    "+ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>", "<eos>", "<pad>", "<start_of_turn>",
            "<end_of_turn>"]
SIZE = {"hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2}


@dataclass(frozen=True)
class Family:
    """One row of the matrix: how to build its model, which tokenizer it uses and what makes it different."""

    name: str
    title: str
    traits: str
    tokenizer: str  # "chatml" (no BOS added), "bos" (adds <bos>, Gemma-style template), "gpt2" (no pad token)
    mlp: tuple[str, ...]  # the MLP projections PRAG targets, as resolved by spring_core.parametric.mlp_targets
    make: Callable[[Any], Any]


@functools.lru_cache(maxsize=1)
def _trained_backend() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(TRAINING_TEXT * 4, trainer)
    return backend.to_str()


@functools.cache
def make_tokenizer(kind: str) -> Any:
    """A fresh tokenizer of one kind over the same trained BPE (cached: do not modify the result)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_trained_backend())
    if kind == "chatml":
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>",
                                            eos_token="<|im_end|>", pad_token="<|im_end|>")
        tokenizer.chat_template = CHATML
    elif kind == "bos":
        bos = backend.token_to_id("<bos>")
        backend.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                               special_tokens=[("<bos>", bos)])
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                            pad_token="<pad>")
        tokenizer.chat_template = GEMMA_TEMPLATE
    elif kind == "gpt2":  # GPT-2's own convention: one <|endoftext|> for bos and eos, no pad, no BOS added
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                            eos_token="<|endoftext|>")
    else:
        raise ValueError(kind)
    return tokenizer


def _ids(tokenizer: Any) -> dict[str, Any]:
    return {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def _llama(tok: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        hidden_size=SIZE["hidden"], intermediate_size=SIZE["intermediate"], num_hidden_layers=SIZE["layers"],
        num_attention_heads=SIZE["heads"], num_key_value_heads=SIZE["kv_heads"], max_position_embeddings=512,
        tie_word_embeddings=True, initializer_range=0.3, **_ids(tok)))


def _qwen2(tok: Any) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(
        hidden_size=SIZE["hidden"], intermediate_size=SIZE["intermediate"], num_hidden_layers=SIZE["layers"],
        num_attention_heads=SIZE["heads"], num_key_value_heads=SIZE["kv_heads"], max_position_embeddings=512,
        tie_word_embeddings=False, initializer_range=0.3, **_ids(tok)))


def _mistral(tok: Any) -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(
        hidden_size=SIZE["hidden"], intermediate_size=SIZE["intermediate"], num_hidden_layers=SIZE["layers"],
        num_attention_heads=SIZE["heads"], num_key_value_heads=SIZE["kv_heads"], max_position_embeddings=512,
        sliding_window=16, tie_word_embeddings=False, initializer_range=0.3, **_ids(tok)))


def _gemma3(tok: Any) -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(
        hidden_size=SIZE["hidden"], intermediate_size=SIZE["intermediate"], num_hidden_layers=SIZE["layers"],
        num_attention_heads=SIZE["heads"], num_key_value_heads=SIZE["kv_heads"], head_dim=16,
        max_position_embeddings=512, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
        initializer_range=0.3, **_ids(tok)))


def _gpt2(tok: Any) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(
        n_embd=SIZE["hidden"], n_layer=SIZE["layers"], n_head=SIZE["heads"], n_positions=512,
        initializer_range=0.3, **_ids(tok)))


def _phi3(tok: Any) -> Any:
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(
        hidden_size=SIZE["hidden"], intermediate_size=SIZE["intermediate"], num_hidden_layers=SIZE["layers"],
        num_attention_heads=SIZE["heads"], num_key_value_heads=SIZE["kv_heads"], max_position_embeddings=512,
        original_max_position_embeddings=512, initializer_range=0.3, **_ids(tok)))


def _opt350m(tok: Any) -> Any:
    from transformers import OPTConfig, OPTForCausalLM

    # OPT-350m's shape: a 512-wide embedding projected in and out of the 1024-wide decoder, post-layer-norm.
    return OPTForCausalLM(OPTConfig(
        hidden_size=SIZE["hidden"], word_embed_proj_dim=SIZE["hidden"] // 2, ffn_dim=SIZE["intermediate"],
        num_hidden_layers=SIZE["layers"], num_attention_heads=SIZE["heads"], max_position_embeddings=512,
        do_layer_norm_before=False, init_std=0.3, **_ids(tok)))


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("llama", "Llama (tied)", "tied embeddings, RoPE", "chatml", ("gate_proj", "up_proj", "down_proj"),
           _llama),
    Family("qwen2", "Qwen2", "untied lm_head, qkv bias", "chatml", ("gate_proj", "up_proj", "down_proj"), _qwen2),
    Family("mistral", "Mistral", "sliding window 16", "chatml", ("gate_proj", "up_proj", "down_proj"), _mistral),
    Family("gemma3", "Gemma 3 (text)", "scaled embeddings, BOS-adding tokenizer, hybrid cache", "bos",
           ("gate_proj", "up_proj", "down_proj"), _gemma3),
    Family("gpt2", "GPT-2", "absolute positions, Conv1D, no pad token", "gpt2", ("mlp.c_fc", "mlp.c_proj"), _gpt2),
    Family("phi3", "Phi-3", "fused qkv and gate_up", "chatml", ("gate_up_proj", "down_proj"), _phi3),
    Family("opt350m", "OPT-350m-shaped", "embedding narrower than hidden (project_in/out), learned positions",
           "chatml", ("fc1", "fc2"), _opt350m),
]}


@functools.cache
def build(name: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of one family, seeded, in eval mode, built once per process (do not modify)."""
    family = FAMILIES[name]
    tokenizer = make_tokenizer(family.tokenizer)
    torch.manual_seed(0)
    model = family.make(tokenizer).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
