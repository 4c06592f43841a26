"""A thin client's input embedding (issue #29, part 3): rows read lazily from a model folder's safetensors equal the
in-process embedding module's output bit for bit -- on a tiny Llama (a plain lookup) and a tiny Gemma 3 (rows times
sqrt(hidden), in float32 and bfloat16) -- and only the rows used are ever read."""

from __future__ import annotations

import copy

import pytest
import torch
from families import build

from spring_core import SpringModel
from spring_core.errors import InputError, ModelLoadError
from spring_core.serving.embeddings import (
    KNOWN_EMBEDDINGS,
    EmbeddingRows,
    embedding_layout,
    meta_skeleton,
    skeleton_layout,
)


def saved(name: str, folder, dtype: torch.dtype = torch.float32, **save_options):
    model, tokenizer = build(name)
    model = copy.deepcopy(model).to(dtype) if dtype != torch.float32 else model  # the built one is shared
    model.save_pretrained(folder, **save_options)
    return model, tokenizer


@pytest.mark.parametrize(("family", "dtype"), [("llama", torch.float32), ("gemma3", torch.float32),
                                               ("gemma3", torch.bfloat16)])
def test_rows_read_lazily_equal_the_embedding_modules_output(tmp_path, family, dtype):
    model, tokenizer = saved(family, tmp_path / family, dtype)
    rows = EmbeddingRows.from_folder(tmp_path / family)
    first = tokenizer("Who is Harvard named after? Harvard, Harvard.")["input_ids"]
    ids = torch.tensor([first, first[::-1]])
    with torch.inference_mode():
        expected = model.get_input_embeddings()(ids)
    assert torch.equal(rows(ids), expected) and rows(ids).dtype == dtype
    assert rows.loaded == len(set(first)) < rows.num_rows  # only the rows used were read
    if family == "gemma3":  # the scale is there, and is the module's: bare rows differ
        assert rows.scale == pytest.approx(model.config.hidden_size ** 0.5)
        assert not torch.equal(rows.rows(first), expected[0])
    else:
        assert rows.scale is None
    with torch.inference_mode():
        assert torch.equal(rows(ids[:1]), SpringModel(model, tokenizer).embed(ids[:1]))  # the input layer's own


def test_a_sharded_checkpoint_is_read_through_its_index(tmp_path):
    model, _ = saved("llama", tmp_path / "sharded", max_shard_size="50KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    rows = EmbeddingRows.from_folder(tmp_path / "sharded")
    ids = torch.tensor([[0, 1, 2, 399, 398, 1]])
    assert torch.equal(rows(ids), model.get_input_embeddings()(ids).detach())
    assert rows.loaded == 5 and rows.nbytes == 5 * rows.width * 4


def test_ids_outside_the_table_and_folders_without_safetensors_are_refused(tmp_path):
    saved("llama", tmp_path / "m")
    rows = EmbeddingRows.from_folder(tmp_path / "m")
    with pytest.raises(InputError, match=r"outside the embedding's \d+ rows"):
        rows(torch.tensor([[rows.num_rows]]))
    (tmp_path / "m" / "model.safetensors").rename(tmp_path / "m" / "other.bin")
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        EmbeddingRows.from_folder(tmp_path / "m")


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma3", "gpt2", "phi3", "opt350m"])
def test_the_known_embedding_table_says_what_the_models_class_says(family):
    model, _ = build(family)
    assert model.config.model_type in KNOWN_EMBEDDINGS
    assert embedding_layout(model.config) == skeleton_layout(meta_skeleton(model.config)) == skeleton_layout(model)


def test_every_known_architecture_is_checked_against_its_class():
    from transformers import Qwen3Config

    checked = {build(family)[0].config.model_type for family in ("llama", "qwen2", "mistral", "gemma3", "gpt2",
                                                                  "phi3", "opt350m")}
    assert set(KNOWN_EMBEDDINGS) - checked == {"qwen3"}  # checked here, on a small config of its own
    config = Qwen3Config(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    assert embedding_layout(config) == skeleton_layout(meta_skeleton(config))


def test_an_architecture_outside_the_table_is_described_by_its_class():
    from transformers import FalconConfig

    config = FalconConfig(vocab_size=96, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    assert config.model_type not in KNOWN_EMBEDDINGS
    layout = embedding_layout(config)
    assert layout.module == "transformer.word_embeddings" and layout.shape == (96, 16) and layout.scale is None
