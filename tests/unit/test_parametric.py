"""Document adapters (PRAG): the sharded store and the per-call, per-context activation on the tiny Llama."""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import threading

import pytest
import torch
from conftest import weights_digest
from doctest_globals import document_tensors

from spring_core import SpringModel
from spring_core.errors import ArtifactError, ModelMismatchError, OptionError, SpringError
from spring_core.model.loading import load_model
from spring_core.parametric import (
    AdapterStore,
    DocumentAdapters,
    LoraSpec,
    LoraUpdate,
    UnknownDocumentError,
    open_adapters,
)

PROMPT = "Question: Who is Harvard named after?\nAnswer:"


@pytest.fixture()
def model(tiny_dir):
    """A private copy of the tiny Llama: these tests hook its modules."""
    return load_model(str(tiny_dir))[0]


@pytest.fixture()
def spec(model):
    return LoraSpec.for_model(model, rank=2, alpha=32)


@pytest.fixture()
def store(tmp_path, model, spec):
    store = AdapterStore.create(tmp_path / "adapters", model, spec, base_model_name="tiny")
    store.add({f"doc-{i}": document_tensors(spec, i) for i in range(4)})
    store.add({"doc-4": document_tensors(spec, 4)})
    return store


def merged_logits(model, adapters: list[dict[str, torch.Tensor]], spec: LoraSpec, ids: torch.Tensor) -> torch.Tensor:
    """Reference: a deep copy with ``W + sum_i (alpha/r) B_i A_i`` written into its weights."""
    merged = copy.deepcopy(model)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for name in spec.modules:
            for adapter in adapters:
                modules[name].weight += spec.scale * adapter[f"{name}.lora_B"] @ adapter[f"{name}.lora_A"]
    return merged(ids).logits


def prompt_ids(tiny, text: str = PROMPT) -> torch.Tensor:
    return torch.tensor([tiny[1](text)["input_ids"]])


# ----- the store ---------------------------------------------------------------------------------------------


def test_spec_targets_the_ffn_projections_of_every_layer(spec, model):
    assert len(spec.modules) == 3 * model.config.num_hidden_layers and spec.scale == 16.0
    assert all(name.rsplit(".", 1)[-1] in ("gate_proj", "up_proj", "down_proj") for name in spec.modules)


def test_store_round_trip_reopen_and_incremental_add_and_delete(store, spec, model, tmp_path):
    folder = tmp_path / "adapters"
    reopened = AdapterStore.open(folder, model=model)
    assert sorted(reopened.ids()) == [f"doc-{i}" for i in range(5)]
    for i in (0, 4):
        stored = reopened.get(f"doc-{i}")
        assert all(torch.equal(stored[key], value) for key, value in document_tensors(spec, i).items())
    shards_before = sorted(p.name for p in (folder / "shards").iterdir())
    assert len(shards_before) == 2  # one per add: an add never rewrites existing shards
    reopened.delete(["doc-1"])
    again = AdapterStore.open(folder, model=model)
    assert "doc-1" not in again and len(again) == 4
    assert torch.equal(again.get("doc-2")["model.layers.0.mlp.up_proj.lora_A"],
                       document_tensors(spec, 2)["model.layers.0.mlp.up_proj.lora_A"])
    listed = set(json.loads((folder / "spring.json").read_text())["files"])
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "spring.json"}
    assert listed == on_disk  # retired shards and indexes are removed
    with pytest.raises(UnknownDocumentError, match="no adapter for document 'doc-1'"):
        again.get("doc-1")
    with pytest.raises(ArtifactError, match="already have adapters"):
        again.add({"doc-2": document_tensors(spec, 9)})
    again.add({"doc-2": document_tensors(spec, 9)}, replace=True)
    assert torch.equal(AdapterStore.open(folder).get("doc-2")["model.layers.1.mlp.down_proj.lora_B"],
                       document_tensors(spec, 9)["model.layers.1.mlp.down_proj.lora_B"])


def test_a_replaced_adapter_is_used_at_once_and_named_anew(store, spec, model):
    """The combination cache is keyed by what makes the update: a replaced document's new adapter is used by the
    next call, and the name a server would load it under changes with it."""
    with DocumentAdapters(store, model) as adapters:
        before, named_before = adapters.update_and_identity(["doc-0", "doc-1"])
        store.add({"doc-0": document_tensors(spec, 7)}, replace=True)
        after, named_after = adapters.update_and_identity(["doc-0", "doc-1"])
        fresh = DocumentAdapters(store, model).update_for(["doc-0", "doc-1"])
    name = next(iter(spec.modules))
    assert named_after != named_before and after is not before
    assert torch.equal(after.factors[name][0], fresh.factors[name][0])
    assert not torch.equal(after.factors[name][0], before.factors[name][0])


def test_poly_experts_are_named_by_their_top_experts(spec, model):
    from spring_core.parametric.poly import PolyAdapters

    generator = torch.Generator().manual_seed(0)
    experts = {}
    for module, (out, inp) in spec.modules.items():
        experts[f"{module}.lora_A"] = torch.randn(4, spec.rank, inp, generator=generator) * 0.05
        experts[f"{module}.lora_B"] = torch.randn(4, out, spec.rank, generator=generator) * 0.05
    routing = torch.randn(2, 4, generator=generator)
    manifest = {"kind": "poly-experts", "files": {"experts.safetensors": {"sha256": "abc"}}}
    four, one = (PolyAdapters(spec, experts, routing, ["d0", "d1"], model, top_experts=top, manifest=manifest)
                 for top in (4, 1))
    (update_four, named_four), (update_one, named_one) = (a.update_and_identity(["d0"]) for a in (four, one))
    name = next(iter(spec.modules))
    assert not torch.equal(update_four.factors[name][0], update_one.factors[name][0]) and named_four != named_one


def test_half_precision_storage_halves_the_bytes(tmp_path, model):
    full = LoraSpec.for_model(model, rank=2, alpha=32)
    half = LoraSpec.for_model(model, rank=2, alpha=32, dtype="float16")
    stores = {}
    for name, spec in (("full", full), ("half", half)):
        stores[name] = AdapterStore.create(tmp_path / name, model, spec, base_model_name="tiny")
        stores[name].add({"doc": document_tensors(spec, 0)})
    assert stores["half"].bytes_per_document() * 2 == stores["full"].bytes_per_document()
    stored = AdapterStore.open(tmp_path / "half").get("doc")["model.layers.0.mlp.gate_proj.lora_A"]
    assert stored.dtype == torch.float16


def test_bad_adapters_and_ids_are_refused_with_the_reason(store, spec):
    adapter = document_tensors(spec, 0)
    name = next(iter(spec.modules))
    wrong_shape = {**adapter, f"{name}.lora_A": torch.zeros(3, 64)}
    with pytest.raises(ArtifactError, match=r"has shape \(3, 64\)"):
        store.add({"x": wrong_shape})
    with pytest.raises(ArtifactError, match="missing"):
        store.add({"x": {k: v for k, v in adapter.items() if not k.endswith("lora_B")}})
    with pytest.raises(ArtifactError, match="NaN"):
        store.add({"x": {**adapter, f"{name}.lora_B": torch.full_like(adapter[f"{name}.lora_B"], float("nan"))}})
    with pytest.raises(ArtifactError, match="without '/'"):
        store.add({"a/b": adapter})
    with pytest.raises(ArtifactError, match="already holds a store"):
        AdapterStore.create(store.folder, None, spec, base_model_name="tiny")


def test_a_corrupted_shard_or_another_base_model_is_named_on_open(store, tmp_path, tiny_dir):
    from conftest import make_tiny_model

    other = make_tiny_model(tmp_path / "other", load_model(str(tiny_dir))[1], seed=5)
    with pytest.raises(ModelMismatchError, match="was made for 'tiny'"):
        AdapterStore.open(store.folder, model=other)
    shard = sorted((store.folder / "shards").iterdir())[0]
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{shard.name} does not match the SHA-256"):
        AdapterStore.open(store.folder)
    shard.unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        AdapterStore.open(store.folder)


# ----- activation --------------------------------------------------------------------------------------------


def test_hooks_without_an_active_update_leave_the_model_bit_identical(store, model, tiny):
    ids = prompt_ids(tiny)
    before = model(ids).logits
    digest = weights_digest(model)
    adapters = DocumentAdapters(store, model)
    with adapters.activate(["doc-0", "doc-1"]):
        changed = model(ids).logits
    assert not torch.equal(changed, before)
    assert torch.equal(model(ids).logits, before)
    with adapters.activate([]):
        assert torch.equal(model(ids).logits, before)
    assert weights_digest(model) == digest  # never written


def test_hooks_belong_to_their_adapter_set_and_come_off_with_it(store, model, tiny):
    ids = prompt_ids(tiny)
    before = model(ids).logits
    gc.collect()
    hook_count = sum(len(m._forward_hooks) for m in model.modules())
    first, second = DocumentAdapters(store, model), DocumentAdapters(store, model)
    with first.activate(["doc-0"]):
        once = model(ids).logits  # only the first set's hooks add an update, the second set's stay silent
    with second.activate(["doc-0"]):
        assert torch.equal(model(ids).logits, once)
    first.close()
    assert not first.hooks.installed and second.hooks.installed
    with pytest.raises(SpringError, match="is closed"), first.activate(["doc-0"]):
        pass
    with second.activate(["doc-0"]):
        assert torch.equal(model(ids).logits, once)
    with DocumentAdapters(store, model) as third:
        with third.activate(["doc-0"]):
            assert torch.equal(model(ids).logits, once)
    assert not third.hooks.installed
    del second
    gc.collect()
    assert sum(len(m._forward_hooks) for m in model.modules()) == hook_count  # dropped with their owner
    assert torch.equal(model(ids).logits, before)


def test_active_update_equals_merging_the_summed_adapters(store, spec, model, tiny):
    ids = prompt_ids(tiny)
    adapters = DocumentAdapters(store, model)
    docs = ["doc-0", "doc-2", "doc-3"]
    with adapters.activate(docs):
        hooked = model(ids).logits
    reference = merged_logits(model, [document_tensors(spec, i) for i in (0, 2, 3)], spec, ids)
    torch.testing.assert_close(hooked, reference, rtol=1e-4, atol=1e-4)
    assert adapters.update_for(docs) is adapters.update_for(docs)  # cached combination
    with pytest.raises(UnknownDocumentError, match="doc-99"):
        adapters.update_for(["doc-0", "doc-99"])


def test_generation_and_streaming_see_the_update_of_their_own_call(store, model, tiny):
    sm = SpringModel(model, tiny[1])
    adapters = DocumentAdapters(store, model)
    plain = sm.generate_from_prompt(PROMPT, max_new_tokens=6).text
    with adapters.activate(["doc-1"]):
        adapted = sm.generate_from_prompt(PROMPT, max_new_tokens=6).text
        streamed = "".join(sm.stream_from_prompt(PROMPT, max_new_tokens=6))  # worker thread inherits the context
    assert streamed == adapted
    assert adapted != plain  # random adapters of this size change the greedy answer
    assert sm.generate_from_prompt(PROMPT, max_new_tokens=6).text == plain


def _answers_per_document(sm, adapters, docs):
    results = {}
    for doc in docs:
        with adapters.activate([doc]):
            results[doc] = sm.model(prompt_ids((sm.model, sm.tokenizer))).logits
    return results


def test_eight_threads_and_eight_tasks_never_see_each_others_adapters(store, model, tiny):
    sm = SpringModel(model, tiny[1])
    adapters = DocumentAdapters(store, model)
    docs = [f"doc-{i % 5}" for i in range(8)]
    sequential = _answers_per_document(sm, adapters, sorted(set(docs)))
    ids = prompt_ids(tiny)
    barrier = threading.Barrier(8)
    seen: dict[int, torch.Tensor] = {}

    def work(slot: int) -> None:
        with adapters.activate([docs[slot]]):
            barrier.wait()  # every thread holds its own adapters at the same time
            seen[slot] = model(ids).logits

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for slot, doc in enumerate(docs):
        torch.testing.assert_close(seen[slot], sequential[doc], rtol=1e-5, atol=1e-5)

    async def task(slot: int) -> torch.Tensor:
        with adapters.activate([docs[slot]]):
            await asyncio.sleep(0)  # let the other tasks activate theirs in between
            return await asyncio.to_thread(lambda: model(ids).logits)

    async def all_tasks() -> list[torch.Tensor]:
        return await asyncio.gather(*(task(slot) for slot in range(8)))

    for slot, logits in enumerate(asyncio.run(all_tasks())):
        torch.testing.assert_close(logits, sequential[docs[slot]], rtol=1e-5, atol=1e-5)


def test_weighted_updates_and_a_bare_active_update(spec, store, model, tiny):
    ids = prompt_ids(tiny)
    adapters = DocumentAdapters(store, model)  # installs the hooks
    half = LoraUpdate.sum(spec, [store.get("doc-0")], model, weights=[0.5])
    with adapters.hooks.active(half):
        hooked = model(ids).logits
    halved = {k: v * (0.5 if k.endswith("lora_B") else 1.0) for k, v in document_tensors(spec, 0).items()}
    torch.testing.assert_close(hooked, merged_logits(model, [halved], spec, ids), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="1 adapters but 2 weights"):
        LoraUpdate.sum(spec, [store.get("doc-0")], model, weights=[1.0, 2.0])


# ----- online modes ------------------------------------------------------------------------------------------

PASSAGES = ["Harvard is named after John Harvard.", "Yale is in New Haven."]


def test_icl_prag_and_combine_put_knowledge_where_they_promise(store, model, tiny):
    from spring_core import VirtualTokens
    from spring_core.engine import answer_with_adapters
    from spring_core.parametric import ParametricDocument

    sm = SpringModel(model, tiny[1], VirtualTokens.random(model, n=4, seed=2))
    adapters = DocumentAdapters(store, model)
    docs = [ParametricDocument("doc-0", PASSAGES[0], 2.0), ParametricDocument("doc-1", PASSAGES[1], 1.0)]
    question = "Who is Harvard named after?"
    settings = {"max_new_tokens": 5}

    icl = answer_with_adapters(sm, adapters, question, docs, knowledge="icl", k=0, **settings)
    assert icl.text == sm.generate(question, PASSAGES, 0, **settings).text
    with adapters.activate(["doc-0", "doc-1"]):
        prag_expected = sm.generate(question, [], 0, **settings)
        combine_expected = sm.generate(question, PASSAGES, 4, **settings)
    prag = answer_with_adapters(sm, adapters, question, docs, knowledge="prag", **settings)
    assert prag.text == prag_expected.text and prag.usage.virtual_tokens == 0
    combined = answer_with_adapters(sm, adapters, question, docs, knowledge="combine", **settings)  # + all 4 tokens
    assert combined.text == combine_expected.text and combined.usage.virtual_tokens == 4
    assert combined.prompt.count("[1]") == 1 and "Yale" in combined.prompt
    assert sm.generate(question, PASSAGES, 0, **settings).text == icl.text  # nothing stays active


def test_marginal_decoding_weighs_the_prompt_passages_by_their_documents_scores(store, model, tiny):
    from spring_core.engine import answer_with_adapters
    from spring_core.errors import DecodingError
    from spring_core.parametric import ParametricDocument

    sm = SpringModel(model, tiny[1])
    adapters = DocumentAdapters(store, model)
    scored = [ParametricDocument("doc-0", PASSAGES[0], 3.0), ParametricDocument("doc-1", PASSAGES[1], 0.5)]
    out = answer_with_adapters(sm, adapters, "Who?", scored, knowledge="combine", decoding="rag-token",
                               max_new_tokens=3)
    with adapters.activate(["doc-0", "doc-1"]):
        expected = sm.generate("Who?", PASSAGES, 0, decoding="rag-token", scores=[3.0, 0.5], max_new_tokens=3)
    assert out.text == expected.text
    half_scored = [scored[0], ParametricDocument("doc-1", PASSAGES[1])]
    with pytest.raises(DecodingError, match="passage 1 has no retriever score"):
        answer_with_adapters(sm, adapters, "Who?", half_scored, knowledge="combine", decoding="rag-token")


def test_documents_without_adapters_raise_or_fall_back_to_icl_with_a_log_line(store, model, tiny, caplog):
    from spring_core.engine import answer_with_adapters
    from spring_core.parametric import ParametricDocument

    sm = SpringModel(model, tiny[1])
    adapters = DocumentAdapters(store, model)
    docs = [ParametricDocument("doc-0", PASSAGES[0]), ParametricDocument("nope", PASSAGES[1])]
    with pytest.raises(UnknownDocumentError, match=r"\['nope'\].*missing_adapter='icl'"):
        answer_with_adapters(sm, adapters, "Who?", docs, knowledge="prag", max_new_tokens=3)
    with caplog.at_level("WARNING", logger="spring_rag.parametric"):
        fallback = answer_with_adapters(sm, adapters, "Who?", docs, knowledge="prag", missing_adapter="icl",
                                        max_new_tokens=3)
    assert "['nope']" in caplog.text and "Yale" in fallback.prompt and "Harvard" not in fallback.prompt
    with adapters.activate(["doc-0"]):
        assert fallback.text == sm.generate("Who?", [PASSAGES[1]], 0, max_new_tokens=3).text
    with pytest.raises(OptionError, match="needs adapters"):
        answer_with_adapters(sm, None, "Who?", docs, knowledge="combine")
    with pytest.raises(OptionError, match="knowledge must be one of icl, prag, combine; got 'both'"):
        answer_with_adapters(sm, adapters, "Who?", docs, knowledge="both")


# ----- the artifact registry ---------------------------------------------------------------------------------


def test_the_registry_opens_each_kind_for_a_model_and_refuses_the_wrong_one(store, model, tmp_path):
    from spring_core import VirtualTokens
    from spring_core.artifacts.registry import open_artifact

    VirtualTokens.random(model, n=3, seed=1).save(tmp_path / "tokens")
    tokens = open_artifact(tmp_path / "tokens", model)
    assert isinstance(tokens, VirtualTokens) and tokens.n == 3
    with open_artifact(store.folder, model) as adapters:
        assert isinstance(adapters, DocumentAdapters) and "doc-0" in adapters
    with pytest.raises(ArtifactError, match="holds a 'virtual-tokens' artifact, not 'document-adapters'"):
        open_adapters(tmp_path / "tokens", model)
