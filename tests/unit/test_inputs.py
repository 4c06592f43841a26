"""The input layer (spring_core/model/inputs.py): one BOS, embedding space, pad/eos, positions, width, layering."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from families import build, make_tokenizer

from spring_core import ArtifactError, SpringModel, VirtualTokens
from spring_core.errors import InputError, SpringError
from spring_core.model.inputs import InputLayer, left_pad, position_ids
from spring_core.prompts.layouts import build_prompt
from spring_core.types import PromptParts

ROOT = Path(__file__).resolve().parents[2]
@dataclasses.dataclass(frozen=True)
class RenderedParts(PromptParts):
    """What issue #14 adds to PromptParts: a chat render that already holds the template's BOS."""

    special_tokens: bool = True


def test_a_chat_prompt_of_a_bos_adding_tokenizer_holds_exactly_one_bos():
    model, tokenizer = build("gemma3")
    sm = SpringModel(model, tokenizer, VirtualTokens.random(model, 4, tokenizer=tokenizer), layout="chat")
    bos = tokenizer.bos_token_id
    messages = [{"role": "user", "content": "[1] Hamlet is a play.\n\nQuestion: Who wrote Hamlet?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    template_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    for k in (0, 3):
        parts = sm.prompt_parts("Who wrote Hamlet?", ["Hamlet is a play."], k)
        ids = sm.encode(parts)
        assert ids.count(bos) == 1 and ids[0] == bos, k
        assert len(ids) - k == len(template_ids)  # the count the template renders (the issue: 242 vs 241)
    assert sm.encode(sm.prompt_parts("Who wrote Hamlet?", ["Hamlet is a play."], 0)) == template_ids
    raw = SpringModel(model, tokenizer).encode(build_prompt("Who?", ["A passage."], 0))
    assert raw.count(bos) == 1 and raw[0] == bos  # the raw layout still gets the tokenizer's BOS


def test_special_tokens_false_means_the_text_is_encoded_as_it_is():
    model, tokenizer = build("gemma3")
    layer = InputLayer(model, tokenizer)
    plain = tokenizer("Question: Who?", add_special_tokens=False)["input_ids"]
    assert layer.encode(RenderedParts("Question: Who?", special_tokens=False)) == plain
    assert layer.encode(RenderedParts("Question: Who?")) == [tokenizer.bos_token_id, *plain]
    with_block = layer.encode(RenderedParts("", 2, "Question: Who?", special_tokens=False))
    assert with_block == [layer.vocab_rows, layer.vocab_rows + 1, *plain]


def test_gemma_embedding_space_is_the_modules_output():
    model, tokenizer = build("gemma3")
    layer = InputLayer(model, tokenizer)
    assert layer.embedding_scale() == pytest.approx(math.sqrt(model.config.hidden_size), rel=1e-5)
    ids = tokenizer("Paris", add_special_tokens=False)["input_ids"]
    tokens = VirtualTokens.from_text(model, n=len(ids), text="Paris", tokenizer=tokenizer)
    assert torch.equal(tokens.weight.detach(), model.get_input_embeddings()(torch.tensor(ids)))
    assert not torch.allclose(tokens.weight.detach(), model.get_input_embeddings().weight[ids])
    vocab = VirtualTokens.from_vocab(model, 50, tokenizer=tokenizer)
    random = VirtualTokens.random(model, 2000, tokenizer=tokenizer)
    table = model.get_input_embeddings()(torch.arange(layer.vocab_rows)).detach()
    assert float(random.weight.std()) == pytest.approx(float(table.std()), rel=0.1)
    assert float(vocab.weight.abs().mean()) == pytest.approx(float(table.abs().mean()), rel=0.5)


def test_official_rows_are_rescaled_into_the_output_space(tmp_path):
    model, tokenizer = build("gemma3")
    raw = model.get_input_embeddings().weight.detach()[:5].clone()
    torch.save(raw, tmp_path / "official.pt")
    imported = VirtualTokens.from_official_pt(tmp_path / "official.pt", model)
    assert torch.allclose(imported.weight.detach(), model.get_input_embeddings()(torch.arange(5)), rtol=1e-5)
    as_is = VirtualTokens.from_official_pt(tmp_path / "official.pt", model, space="output")
    assert torch.equal(as_is.weight.detach(), raw)


class PerDimensionScaled(torch.nn.Embedding):
    """An embedding whose output is not one scalar times its weight (a learned per-dimension scale)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * torch.linspace(0.5, 2.0, self.embedding_dim)


def test_an_embedding_that_is_not_a_scalar_multiple_is_refused_for_raw_imports(tmp_path):
    from families import FAMILIES

    tokenizer = make_tokenizer("chatml")
    torch.manual_seed(0)
    model = FAMILIES["llama"].make(tokenizer).eval()
    old = model.get_input_embeddings()
    scaled = PerDimensionScaled(old.num_embeddings, old.embedding_dim)
    scaled.weight = old.weight
    model.set_input_embeddings(scaled)
    with pytest.raises(InputError, match="does not scale its weight rows by one number"):
        InputLayer(model, tokenizer).embedding_scale()
    torch.save(torch.randn(3, old.embedding_dim), tmp_path / "official.pt")
    with pytest.raises(ArtifactError, match="cannot import .*from_text"):
        VirtualTokens.from_official_pt(tmp_path / "official.pt", model)
    tokens = VirtualTokens.from_text(model, n=3, text="Paris", tokenizer=tokenizer)  # text init still works
    assert torch.equal(tokens.weight.detach()[0], scaled(torch.tensor(tokenizer("Paris")["input_ids"][:1]))[0])


def test_the_width_comes_from_the_embedding_not_hidden_size(tmp_path):
    model, tokenizer = build("opt350m")
    assert InputLayer(model, tokenizer).width == model.config.word_embed_proj_dim != model.config.hidden_size
    tokens = VirtualTokens.from_text(model, n=2, tokenizer=tokenizer)
    tokens.save(tmp_path / "art")
    assert VirtualTokens.load(tmp_path / "art", model=model).hidden_size == model.config.word_embed_proj_dim
    with pytest.raises(InputError, match="64 wide"):
        InputLayer(model, tokenizer).embed(torch.tensor([[1, InputLayer(model, tokenizer).vocab_rows]]),
                                           torch.zeros(1, 64))


def test_pad_falls_back_to_eos_and_neither_is_a_clear_error():
    from families import FAMILIES, _trained_backend
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    model, tokenizer = build("gpt2")
    assert tokenizer.pad_token_id is None
    assert InputLayer(model, tokenizer).pad_token_id == tokenizer.eos_token_id
    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained_backend()))  # no pad, no eos
    torch.manual_seed(0)
    model = FAMILIES["gpt2"].make(bare).eval()
    sm = SpringModel(model, bare)
    assert sm.pad_token_id is None and sm.eos_ids() == set()
    ids, mask = left_pad([[1, 2], [3, 4]], None)  # rows of one length need no pad id
    assert ids.tolist() == [[1, 2], [3, 4]] and bool(mask.all())
    assert sm.generate_batch(["Who wrote Hamlet?"], max_new_tokens=2)[0].usage.completion_tokens == 2
    with pytest.raises(InputError, match="neither a pad token nor an eos token.*set tokenizer.pad_token"):
        sm.generate_batch(["Who wrote Hamlet?", "Where is the Eiffel Tower in France?"], max_new_tokens=2)
    with pytest.raises(SpringError, match="set tokenizer.pad_token"):
        sm.inputs.require_pad_token_id()


def test_position_ids_follow_the_mask_under_left_padding():
    _, mask = left_pad([[5, 6, 7], [8]], 0)
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    model, tokenizer = build("gpt2")
    inputs = InputLayer(model, tokenizer).batch([[5, 6, 7], [8]], positions=True)
    assert inputs["position_ids"][1, -1] == 0


