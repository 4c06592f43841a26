"""The thin client's input embedding on the real models (issue #29, part 3): rows read lazily from the cached
safetensors folders of SmolLM2-135M-Instruct (a plain lookup, tied to the head) and Gemma 3 270M (rows times
sqrt(640)) equal the loaded models' embedding modules bit for bit, reading only the rows a prompt uses."""

from __future__ import annotations

import pytest
import torch

from spring_core import SpringModel
from spring_core.model.loading import resolve_model_source
from spring_core.serving.embeddings import EmbeddingRows

pytestmark = pytest.mark.integration
PROMPT = "Question: Who is Harvard University named after?\nAnswer: John Harvard, its first benefactor."


@pytest.mark.parametrize(("alias", "fixture"), [("smollm2-135m", "smollm2"), ("gemma3-270m", "gemma3")])
def test_rows_from_the_cached_safetensors_equal_the_loaded_models_embedding(alias, fixture, request):
    model, tokenizer = request.getfixturevalue(fixture)
    rows = EmbeddingRows.from_folder(resolve_model_source(alias)[0])
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.inference_mode():
        expected = SpringModel(model, tokenizer).embed(ids)
    assert torch.equal(rows(ids), expected)
    assert (rows.num_rows, rows.width) == tuple(model.get_input_embeddings().weight.shape)
    assert rows.loaded == len(set(ids[0].tolist())) and rows.nbytes < 64 * rows.width * 4  # a few KB, not the table
    assert (rows.scale is not None) == (alias == "gemma3-270m")
