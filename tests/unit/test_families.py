"""The architecture matrix: one test body per feature, run over every family in ``tests/families.py``.

Each test names its feature in ``FEATURE`` (read by ``scripts/compat_table.py``, which runs this file and writes
the README's compatibility table from the outcomes). Init exactness records its max abs difference per family.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import weights_digest
from families import FAMILIES, build

from spring_core import SpringModel, VirtualTokens
from spring_core.model.inputs import InputLayer
from spring_core.parametric import LoraSpec, LoraUpdate
from spring_core.parametric.hooks import AdapterHooks
from spring_core.types import PromptParts
from spring_train.batching import build_example, collate
from spring_train.methods import SpringTarget

NAMES = list(FAMILIES)
QUESTION = "Who wrote Hamlet?"
PASSAGES = ["William Shakespeare wrote the play Hamlet.", "The Eiffel Tower is in Paris, France."]
INIT_TEXT = "The capital of Japan is Tokyo."

pytestmark = pytest.mark.parametrize("family", NAMES)


def feature(name: str):
    """Tag a test with the feature column it fills in the README table."""
    return pytest.mark.feature(name)


def spring(family: str, n: int = 4, seed: int = 0) -> SpringModel:
    model, tokenizer = build(family)
    return SpringModel(model, tokenizer, VirtualTokens.random(model, n, seed=seed, tokenizer=tokenizer))


@feature("bit-identical without tokens")
def test_no_tokens_is_bit_identical_to_the_base_model(family):
    model, tokenizer = build(family)
    sm = spring(family)
    prompt = sm.prompt_parts(QUESTION, PASSAGES, 0).render()
    with torch.inference_mode():
        expected = model(input_ids=torch.tensor([tokenizer(prompt)["input_ids"]])).logits
        assert torch.equal(sm.logits(prompt), expected)
        assert torch.equal(SpringModel(model, tokenizer).logits(prompt), expected)


@feature("init exactness")
def test_a_block_initialised_from_a_text_reads_as_that_text(family, record_property):
    model, tokenizer = build(family)
    text_ids = tokenizer(INIT_TEXT, add_special_tokens=False)["input_ids"]
    tokens = VirtualTokens.from_text(model, n=len(text_ids), text=INIT_TEXT, tokenizer=tokenizer)
    sm = SpringModel(model, tokenizer, tokens)
    ids = sm.encode(sm.prompt_parts(QUESTION, PASSAGES, len(text_ids)))
    start = ids.index(sm.vocab_rows)
    as_text = ids[:start] + text_ids + ids[start + len(text_ids):]
    with torch.inference_mode():
        spliced = model(**sm.model_inputs([ids])).logits
        plain = model(input_ids=torch.tensor([as_text])).logits
    diff = float((spliced - plain).abs().max())
    record_property("max_abs_diff", diff)
    assert diff < 1e-4


@feature("training")
def test_training_lowers_the_loss_and_rows_do_not_depend_on_their_batch(family):
    model, tokenizer = build(family)
    before = weights_digest(model)
    target = SpringTarget(model, tokenizer, VirtualTokens.from_text(model, n=4, tokenizer=tokenizer))
    rows = [build_example(target.spring, question=QUESTION, passages=PASSAGES[:1], answer="Shakespeare", k=4),
            build_example(target.spring, question="Where is the Eiffel Tower?", passages=PASSAGES, answer="Paris",
                          k=3)]
    assert len(rows[0].input_ids) != len(rows[1].input_ids)  # left padding is exercised
    pad = target.spring.inputs.require_pad_token_id()

    def loss(examples):
        batch = collate(examples, pad)
        return target(batch.input_ids, batch.attention_mask, batch.labels)

    with torch.no_grad():
        together, alone = loss(rows), loss(rows[:1]) + loss(rows[1:])
    assert float(together) == pytest.approx(float(alone), rel=1e-4)
    optimizer = torch.optim.AdamW([target.tokens.weight], lr=0.05)
    losses = []
    for _ in range(4):
        value = loss(rows)
        value.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(value.detach()))
    assert losses[-1] < losses[0]
    assert weights_digest(model) == before


@feature("save/load")
def test_tokens_round_trip_through_an_artifact(family, tmp_path):
    model, tokenizer = build(family)
    tokens = VirtualTokens.random(model, 3, seed=1, tokenizer=tokenizer)
    tokens.save(tmp_path / "art")
    loaded = VirtualTokens.load(tmp_path / "art", model=model)
    assert torch.equal(loaded.weight, tokens.weight)
    assert loaded.hidden_size == InputLayer(model, tokenizer).width == model.get_input_embeddings()(
        torch.tensor([0])).shape[-1]


@feature("generate/stream/batch")
def test_generate_stream_and_a_left_padded_batch_agree(family):
    sm = spring(family)
    healed = PromptParts(f"Context: {PASSAGES[0]}\n", 3, f"Query: {QUESTION}\nAnswer: ")  # ends in a space
    items = [{"question": QUESTION, "passages": PASSAGES[:1], "k": 4},
             {"question": "Where is the Eiffel Tower?", "passages": PASSAGES, "k": 2}]
    one_by_one = [sm.generate(item["question"], item["passages"], item["k"], max_new_tokens=6) for item in items]
    one_by_one.append(sm.generate_from_prompt(healed, max_new_tokens=6))
    batched = sm.generate_batch([*items, healed], max_new_tokens=6)
    assert [g.text for g in batched] == [g.text for g in one_by_one]
    assert [g.usage for g in batched] == [g.usage for g in one_by_one]
    stream = sm.stream(QUESTION, PASSAGES[:1], 4, max_new_tokens=6)
    assert "".join(stream) == one_by_one[0].text and stream.result.usage == one_by_one[0].usage
    assert "".join(sm.stream_from_prompt(healed, max_new_tokens=6)) == one_by_one[2].text


@feature("RAG-Token / RAG-Sequence")
def test_marginal_modes_run_and_one_passage_is_plain_greedy(family):
    sm = spring(family)
    greedy = sm.generate(QUESTION, PASSAGES[:1], 3, max_new_tokens=5)
    for mode in ("rag-token", "rag-sequence", "rag-sequence-fast"):
        out = sm.generate(QUESTION, PASSAGES[:1], 3, max_new_tokens=5, decoding=mode)
        assert (out.text, out.usage) == (greedy.text, greedy.usage), mode
    two = sm.generate(QUESTION, PASSAGES, 3, max_new_tokens=5, decoding="rag-sequence", scores=[1.0, 0.5])
    options = {sm.generate(QUESTION, [p], 3, max_new_tokens=5).text for p in PASSAGES}
    assert two.text in options and two.usage.virtual_tokens == 6
    mixed = sm.generate(QUESTION, PASSAGES, 3, max_new_tokens=5, decoding="rag-token", scores=[1.0, 0.5])
    assert mixed.usage.virtual_tokens == 6 and mixed.usage.completion_tokens >= 1


@feature("PRAG adapters")
def test_prag_adapters_hook_the_familys_mlp_projections(family):
    model, tokenizer = build(family)
    spec = LoraSpec.for_model(model, rank=2, alpha=4)
    leaves = {name for name in spec.modules}
    assert leaves and all(any(n == t or n.endswith("." + t) for t in FAMILIES[family].mlp) for n in leaves)
    assert len(leaves) == len(FAMILIES[family].mlp) * model.config.num_hidden_layers
    generator = torch.Generator().manual_seed(0)
    adapter = {}
    for name, (out_features, in_features) in spec.modules.items():
        adapter[f"{name}.lora_A"] = torch.randn(2, in_features, generator=generator)
        adapter[f"{name}.lora_B"] = torch.randn(out_features, 2, generator=generator)
    hooks = AdapterHooks(model, list(spec.modules))
    ids = torch.tensor([tokenizer(PromptParts(QUESTION).plain_text())["input_ids"]])
    with torch.inference_mode():
        base = model(input_ids=ids).logits
        with hooks.active(LoraUpdate.sum(spec, [adapter], model)):
            adapted = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
    assert not torch.allclose(adapted, base)
    assert torch.equal(again, base)


@feature("SPRING+ (LoRA merged)")
def test_spring_plus_tokens_on_a_merged_lora_load_back_end_to_end(family, tmp_path):
    from peft import LoraConfig, get_peft_model

    from spring_core.artifacts.registry import merge_lora
    from spring_train.adapters import apply_peft_artifact, load_trained, save_peft_artifact

    model, tokenizer = build(family)
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=list(FAMILIES[family].mlp), init_lora_weights=False)
    save_peft_artifact(get_peft_model(copy.deepcopy(model), config), tmp_path / "lora", method="lora")
    merged = merge_lora(copy.deepcopy(model), tmp_path / "lora")  # the runtime's merge, without peft
    by_peft = apply_peft_artifact(copy.deepcopy(model), tmp_path / "lora").merge_and_unload()
    for name, weight in by_peft.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[name], weight, rtol=1e-5, atol=1e-6)
    target = SpringTarget(merged, tokenizer, VirtualTokens.from_text(merged, n=4, tokenizer=tokenizer),
                          base_lora=tmp_path / "lora")
    target.export(tmp_path / "plus")
    loaded = load_trained(str(base_dir), tmp_path / "plus")
    expected = target.spring.generate(QUESTION, PASSAGES, 4, max_new_tokens=5)
    assert loaded.generate(QUESTION, PASSAGES, 4, max_new_tokens=5).text == expected.text
    with torch.inference_mode():
        prompt = loaded.prompt_parts(QUESTION, PASSAGES, 0).render()
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        assert not torch.allclose(loaded.logits(prompt), model(input_ids=ids).logits)  # the LoRA is in there
