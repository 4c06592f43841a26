"""The dtype path on CPU: a bf16 model reads a float32 token table cast to bf16, bit for bit where it should.

No GPU is needed: bfloat16 runs on CPU, so the casts (table -> model dtype, module output space in bf16) are
tested here; tests/unit/test_gpu.py repeats the device path on CUDA where one exists.
"""

from __future__ import annotations

import copy

import pytest
import torch
from families import build

from spring_core import SpringModel, VirtualTokens
from spring_core.model.loading import load_model

QUESTION = "Who wrote Hamlet?"
PASSAGES = ["William Shakespeare wrote the play Hamlet."]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def bf16(request):
    model, tokenizer = build(request.param)
    return copy.deepcopy(model).to(torch.bfloat16), tokenizer


def test_bf16_without_tokens_is_bit_identical_and_the_table_is_cast(bf16):
    model, tokenizer = bf16
    tokens = VirtualTokens.from_text(model, n=4, tokenizer=tokenizer)
    assert tokens.weight.dtype == torch.float32
    sm = SpringModel(model, tokenizer, tokens)
    prompt = sm.prompt_parts(QUESTION, PASSAGES, 0).render()
    with torch.inference_mode():
        assert torch.equal(sm.logits(prompt), model(input_ids=torch.tensor([tokenizer(prompt)["input_ids"]])).logits)
        embeds = sm.model_inputs([sm.encode(sm.prompt_parts(QUESTION, PASSAGES, 4))])["inputs_embeds"]
    assert embeds.dtype == torch.bfloat16


def test_bf16_init_exactness_and_generation(bf16):
    model, tokenizer = bf16
    text = "The capital of Japan is Tokyo."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    sm = SpringModel(model, tokenizer, VirtualTokens.from_text(model, n=len(ids), text=text, tokenizer=tokenizer))
    spliced = sm.encode(sm.prompt_parts(QUESTION, PASSAGES, len(ids)))
    start = spliced.index(sm.vocab_rows)
    with torch.inference_mode():
        a = model(**sm.model_inputs([spliced])).logits
        b = model(input_ids=torch.tensor([spliced[:start] + ids + spliced[start + len(ids):]])).logits
    assert torch.equal(a, b)  # bf16 rows survive the float32 table exactly
    out = sm.generate(QUESTION, PASSAGES, max_new_tokens=4)
    assert out.usage.completion_tokens >= 1
    assert sm.generate(QUESTION, PASSAGES, max_new_tokens=4, decoding="rag-token").text == out.text


def test_load_model_honours_dtype_and_device(tiny_dir):
    model, _ = load_model(str(tiny_dir), device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    sm = SpringModel.from_pretrained(str(tiny_dir), device="cpu", dtype=torch.float16)
    assert sm.model.dtype == torch.float16 and sm.device.type == "cpu"
