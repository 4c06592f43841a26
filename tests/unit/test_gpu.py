"""The GPU path (device, dtype, device_map, autocast training); every test skips without CUDA."""

from __future__ import annotations

import pytest
import torch
from families import build

from spring_core import SpringModel, VirtualTokens
from spring_core.model.loading import load_model
from spring_core.types import PromptParts
from spring_train.batching import build_example, collate
from spring_train.methods import SpringTarget

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

QUESTION = "Who wrote Hamlet?"
PASSAGES = ["William Shakespeare wrote the play Hamlet.", "The Eiffel Tower is in Paris, France."]


@pytest.fixture(params=["llama", "gemma3", "gpt2"])
def cuda_model(request):
    model, tokenizer = build(request.param)
    return type(model)(model.config).to("cuda", torch.bfloat16).eval(), tokenizer, model


def test_bf16_cuda_inference_matches_the_base_and_reads_the_table(cuda_model):
    model, tokenizer, cpu_model = cuda_model
    model.load_state_dict(cpu_model.state_dict())
    tokens = VirtualTokens.from_text(model, n=4, tokenizer=tokenizer)
    sm = SpringModel(model, tokenizer, tokens)
    prompt = sm.prompt_parts(QUESTION, PASSAGES, 0).render()
    with torch.inference_mode():
        ids = torch.tensor([tokenizer(prompt)["input_ids"]], device="cuda")
        assert torch.equal(sm.logits(prompt), model(input_ids=ids).logits)
    assert sm.device.type == "cuda"
    out = sm.generate(QUESTION, PASSAGES, 4, max_new_tokens=6)
    batch = sm.generate_batch([{"question": QUESTION, "passages": PASSAGES, "k": 4}], max_new_tokens=6)
    assert batch[0].text == out.text
    for mode in ("rag-token", "rag-sequence"):
        assert sm.generate(QUESTION, PASSAGES, 4, max_new_tokens=6, decoding=mode).usage.virtual_tokens == 8
    healed = PromptParts(f"Context: {PASSAGES[0]}\n", 4, f"Query: {QUESTION}\nAnswer: ")  # healed on the GPU
    assert sm.generate_from_prompt(healed, max_new_tokens=6).usage.virtual_tokens == 4


def test_training_step_under_bf16_autocast_on_cuda(cuda_model):
    _, tokenizer, cpu_model = cuda_model
    model = type(cpu_model)(cpu_model.config).to("cuda").eval()
    model.load_state_dict(cpu_model.state_dict())
    target = SpringTarget(model, tokenizer, VirtualTokens.from_text(model, n=4, tokenizer=tokenizer)).to("cuda")
    example = build_example(target.spring, question=QUESTION, passages=PASSAGES, answer="Shakespeare", k=4)
    batch = collate([example], target.spring.inputs.require_pad_token_id()).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = target(batch.input_ids, batch.attention_mask, batch.labels)
    loss.backward()
    assert target.tokens.weight.grad is not None and torch.isfinite(target.tokens.weight.grad).all()


def test_load_model_with_device_map_auto(tiny_dir):
    model, tokenizer = load_model(str(tiny_dir), device_map="auto", dtype="bfloat16")
    assert model.get_input_embeddings().weight.device.type == "cuda"
    sm = SpringModel(model, tokenizer, VirtualTokens.random(model, 2, tokenizer=tokenizer))
    assert sm.generate(QUESTION, PASSAGES, 2, max_new_tokens=4).usage.virtual_tokens == 2


def test_each_launched_encoding_process_takes_its_own_gpu(monkeypatch):
    from spring_cli.parametric import _process_device

    count = torch.cuda.device_count()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _process_device((1, 2)) == f"cuda:{1 % count}"
    assert _process_device((0, 1)) is None  # one process: the default device
