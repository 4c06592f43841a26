"""PRAG target names resolved per architecture (spring_core.parametric.store.mlp_targets)."""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES, build, make_tokenizer

from spring_core import ArtifactError
from spring_core.parametric import LoraSpec
from spring_core.parametric.store import mlp_targets


def test_known_families_resolve_to_their_mlp_projections():
    for name, family in FAMILIES.items():
        assert mlp_targets(build(name)[0]) == family.mlp, name


def test_gpt2_conv1d_shapes_are_out_by_in_and_attention_c_proj_is_left_alone():
    model, _ = build("gpt2")
    spec = LoraSpec.for_model(model)
    assert set(spec.modules) == {f"transformer.h.{i}.mlp.{leaf}" for i in range(2) for leaf in ("c_fc", "c_proj")}
    assert spec.modules["transformer.h.0.mlp.c_fc"] == (256, 64)  # Conv1D weight is [in, out]
    assert spec.modules["transformer.h.0.mlp.c_proj"] == (64, 256)


def test_an_unknown_architecture_falls_back_to_its_mlp_block_or_says_what_to_pass():
    tokenizer = make_tokenizer("chatml")
    torch.manual_seed(0)
    model = FAMILIES["llama"].make(tokenizer)
    model.config.model_type = "mystery"
    assert mlp_targets(model) == ("down_proj", "gate_proj", "up_proj")
    bare = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ArtifactError, match="pass targets="):
        mlp_targets(bare)
    with pytest.raises(ArtifactError, match="its MLP projections are gate_proj, up_proj, down_proj"):
        LoraSpec.for_model(build("llama")[0], targets=("no_such_proj",))
