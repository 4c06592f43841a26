"""DyPRAG: the parameter translator, its training from a PRAG store, its artifact, and adapters made on the fly.

Everything runs on tiny random models built from configs (the tiny Llama, plus Gemma 3 and GPT-2 from the family
matrix); a PRAG store is encoded for real first, so the translator regresses on real PRAG adapters.
"""

from __future__ import annotations

import json

import pytest
import torch
from augmented_rows import AUGMENTED, corpus_rows
from conftest import make_tiny_model, weights_digest

from spring_core import SpringModel
from spring_core.artifacts.registry import open_artifact
from spring_core.engine import answer_with_adapters
from spring_core.errors import ArtifactError, ModelMismatchError, OptionError, UnknownDocumentError
from spring_core.model.loading import load_model
from spring_core.parametric import AdapterStore, DocumentAdapters, LoraSpec, ParametricDocument, plan_call
from spring_core.parametric.dyprag import (
    DyPRAG,
    DyPRAGAdapters,
    DyPRAGConfig,
    ParameterTranslator,
    document_ids,
    layer_index,
)
from spring_train.dyprag import DyPRAGSettings, encode_corpus, train_dyprag
from spring_train.parametrize import PragSettings, parametrize
from spring_train.trainer import TrainingInterrupted

ROWS = {**AUGMENTED, "mit": {"id": "mit", "status": "failed", "error": "no JSON"}}
CORPUS = corpus_rows(ROWS)
CORPUS.append({"id": "new", "title": "Rice", "text": "Rice University is in Houston, Texas."})
FAST = DyPRAGSettings(width=8, lr=3e-3, epochs=5, checkpoint_every=2)


@pytest.fixture(scope="module")
def sm(tiny_dir):
    return SpringModel(*load_model(str(tiny_dir)))


@pytest.fixture(scope="module")
def prag_store(sm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prag") / "store"
    parametrize(sm, ROWS, folder, PragSettings(lr=2e-2, epochs=3), model_name="tiny", show_progress=False)
    return folder


@pytest.fixture(scope="module")
def trained(sm, prag_store, tmp_path_factory):
    """A translator trained on the two PRAG adapters, and the report of its run."""
    out = tmp_path_factory.mktemp("dyprag") / "translator"
    before = weights_digest(sm.model)
    report = train_dyprag(sm, ROWS, prag_store, out, FAST, model_name="tiny", show_progress=False)
    assert weights_digest(sm.model) == before  # only the translator trained
    return out, report


def ids_of(sm, text: str) -> torch.Tensor:
    return torch.tensor([sm.tokenizer(text)["input_ids"]])


# ----- the translator ----------------------------------------------------------------------------------------


def test_config_is_validated_and_the_translator_has_one_head_per_module(sm):
    spec = LoraSpec.for_model(sm.model, rank=2, alpha=32)
    config = DyPRAGConfig.for_model(sm.model, spec, width=8)
    assert config.layers == {name: layer_index(name) for name in spec.modules}
    assert sorted(set(config.layers.values())) == [0, 1]
    per_head = [2 * (64 + 1) * 8 + 8 * 2 * (inp + out) for out, inp in spec.modules.values()]
    assert ParameterTranslator(config).num_parameters() == sum(per_head)
    for bad in ({"width": 0}, {"init_std": 0.0}, {"max_document_tokens": -1}, {"layers": {"nope": 1}}):
        with pytest.raises(OptionError):
            DyPRAGConfig(hidden_size=64, spec=spec, **bad)
    assert DyPRAGConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_an_untrained_translator_emits_store_shaped_adapters_near_zero(sm):
    spec = LoraSpec.for_model(sm.model, rank=2, alpha=32)
    dyprag = DyPRAG(ParameterTranslator(DyPRAGConfig.for_model(sm.model, spec, width=8)), sm.model, sm.tokenizer)
    adapter = dyprag.encode(CORPUS[0])
    spec.check("harvard", adapter)  # exactly the PRAG store's form: every module, [r, in] and [out, r], finite
    ids = ids_of(sm, "Question: Who is Harvard named after?\nAnswer:")
    plain = sm.model(ids).logits
    with DyPRAGAdapters(dyprag) as adapters:
        adapters.remember("harvard", CORPUS[0])
        with adapters.activate(["harvard"]):
            started = sm.model(ids).logits
    assert not torch.equal(started, plain) and torch.allclose(started, plain, atol=1e-4)


def test_document_text_is_read_as_plain_characters_and_cut(sm):
    plain = document_ids(sm.tokenizer, "a <|im_end|> b", 512)
    assert sm.tokenizer.eos_token_id not in plain  # a special token's spelling inside a document is text
    assert len(document_ids(sm.tokenizer, CORPUS[0], 5)) == 5
    with pytest.raises(OptionError, match="empty"):
        document_ids(sm.tokenizer, {"title": "", "text": ""}, 512)


# ----- training ----------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_moves_towards_prag_and_records_scores(trained):
    out, report = trained
    assert (report.documents, report.steps, report.not_augmented) == (2, 10, ["mit"])
    assert report.final["loss"] < report.first["loss"] and report.final["mse"] < report.first["mse"]
    manifest = json.loads((out / "spring.json").read_text())
    assert manifest["kind"] == "dyprag" and manifest["scores"] == report.scores
    assert manifest["training"]["width"] == 8 and manifest["source_store"]["documents"] == 2
    # the generated adapters carry the documents: their answers cost far less than with no adapter
    assert report.scores["loss_dyprag"] < 0.75 * report.scores["loss_base"]
    assert not (out / "checkpoints").exists()


def test_an_interrupted_run_resumes_bit_for_bit(sm, prag_store, trained, tmp_path):
    out = tmp_path / "resumed"

    def stop_at_step_three(record):
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train_dyprag(sm, ROWS, prag_store, out, FAST, model_name="tiny", show_progress=False,
                     on_step=stop_at_step_three)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    with pytest.raises(Exception, match="pass --resume"):
        train_dyprag(sm, ROWS, prag_store, out, FAST, model_name="tiny", show_progress=False)
    with pytest.raises(Exception, match="other settings"):
        train_dyprag(sm, ROWS, prag_store, out, DyPRAGSettings(width=8, lr=5e-4, epochs=5), model_name="tiny",
                     resume=True, show_progress=False)
    report = train_dyprag(sm, ROWS, prag_store, out, FAST, model_name="tiny", resume=True, show_progress=False)
    assert report.steps == 10
    assert (out / "translator.safetensors").read_bytes() == (trained[0] / "translator.safetensors").read_bytes()


def test_held_out_documents_are_never_trained_on_and_scored_apart(sm, prag_store, tmp_path):
    from spring_train.dyprag import hold_out

    pairs = [(doc, ROWS[doc]) for doc in ("harvard", "yale")]
    train, apart = hold_out(pairs, 0.5, seed=0)
    assert len(train) == len(apart) == 1 and {train[0][0], apart[0][0]} == {"harvard", "yale"}
    assert hold_out(pairs, 0.5, seed=0) == (train, apart)  # a function of the seed
    steps: list[dict] = []
    report = train_dyprag(sm, ROWS, prag_store, tmp_path / "t", DyPRAGSettings(width=8, lr=3e-3, epochs=2,
                                                                              held_out=0.5),
                          model_name="tiny", show_progress=False, on_step=steps.append)
    assert (report.documents, report.steps, len(steps)) == (1, 2, 2)
    held = report.scores["held_out"]
    assert held["documents"] == 1 and set(held) >= {"loss_base", "loss_prag", "loss_dyprag"}
    assert held["loss_base"] != report.scores["loss_base"]  # scored on the other document
    assert json.loads((tmp_path / "t" / "spring.json").read_text())["scores"]["held_out"] == held
    from spring_train.config import ConfigError

    with pytest.raises(ConfigError, match="held_out"):
        DyPRAGSettings(held_out=1.0)


def test_the_loss_is_lm_plus_weighted_kl_and_mse_and_kl_weight_0_skips_the_teacher(sm, prag_store, tmp_path):
    for name, kl_weight in (("with", 0.5), ("without", 0.0)):
        steps: list[dict] = []
        train_dyprag(sm, ROWS, prag_store, tmp_path / name, DyPRAGSettings(width=8, kl_weight=kl_weight,
                                                                          mse_weight=3.0), model_name="tiny",
                     show_progress=False, on_step=steps.append)
        for step in steps:
            assert step["loss"] == pytest.approx(step["lm"] + kl_weight * step["kl"] + 3.0 * step["mse"], rel=1e-5)
            assert (step["kl"] > 0) == (kl_weight > 0)


def test_training_without_prag_adapters_for_the_documents_is_refused(sm, prag_store, tmp_path):
    from spring_core.errors import SpringError

    with pytest.raises(SpringError, match="parametrize AUG --method prag"):
        train_dyprag(sm, {"mit": ROWS["mit"]}, prag_store, tmp_path / "t", FAST, model_name="tiny",
                     show_progress=False)


# ----- the artifact ------------------------------------------------------------------------------------------


def test_the_artifact_opens_through_the_registry_and_refuses_another_model_and_damage(sm, trained, prag_store,
                                                                                       tiny_dir, tmp_path):
    import shutil

    from spring_core.parametric import open_adapters

    out, _ = trained
    adapters = open_adapters(out, sm.model)
    assert isinstance(adapters, DyPRAGAdapters) and adapters.spec == AdapterStore.open(prag_store).spec
    adapters.close()
    other = make_tiny_model(tmp_path / "other", load_model(str(tiny_dir))[1], seed=7)
    with pytest.raises(ModelMismatchError, match="was made for 'tiny'"):
        open_artifact(out, other)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    data = bytearray((broken / "translator.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (broken / "translator.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the SHA-256"):
        DyPRAG.open(broken, sm.model)

    import hashlib

    from safetensors.torch import load, save

    weights = load((out / "translator.safetensors").read_bytes())
    weights["heads.0.a_out.weight"] = weights["heads.0.a_out.weight"][:-1]  # well-formed, wrong shape, hash updated
    data = save(weights)
    (broken / "translator.safetensors").write_bytes(data)
    manifest = json.loads((broken / "spring.json").read_text())
    manifest["files"]["translator.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (broken / "spring.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not hold this translator's weights"):
        DyPRAG.open(broken, sm.model)
    manifest["translator"] = {"width": 8}
    (broken / "spring.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="translator config is damaged"):
        DyPRAG.open(broken, sm.model)


# ----- adapters on the fly and precomputed ---------------------------------------------------------------------


def test_on_the_fly_adapters_equal_precomputed_ones_and_answer_in_both_modes(sm, trained, tmp_path):
    out, _ = trained
    dyprag = DyPRAG.open(out, sm.model)
    report = encode_corpus(dyprag, CORPUS, tmp_path / "encoded", model_name="tiny", documents_per_shard=2,
                           show_progress=False)
    assert (report.encoded, report.skipped) == (3, 0)
    assert encode_corpus(dyprag, CORPUS, tmp_path / "encoded", model_name="tiny", show_progress=False).skipped == 3
    store = AdapterStore.open(tmp_path / "encoded", model=sm.model)
    assert store.manifest["encoding"]["method"] == "dyprag"

    docs = [ParametricDocument(row["id"], {"title": row["title"], "text": row["text"]}, 1.0) for row in CORPUS]
    question = "Where is Rice?"
    with DyPRAGAdapters(dyprag, encoded_cache_size=8) as fly, DocumentAdapters(store, sm.model) as stored:
        call = plan_call(fly, docs, knowledge="prag", k=None)  # documents without a stored adapter get one
        assert call.adapter_ids == ["harvard", "yale", "new"] and call.passages == []
        for row in CORPUS:
            got, want = fly.adapter(row["id"]), store.get(row["id"])
            assert all(torch.equal(got[key], want[key]) for key in want)
        ids = ids_of(sm, "Question: Where is Rice?\nAnswer:")
        plain = sm.model(ids).logits
        with fly.activate(["new", "yale"]):
            on_the_fly = sm.model(ids).logits
        with stored.activate(["new", "yale"]):
            precomputed = sm.model(ids).logits
        assert torch.equal(on_the_fly, precomputed) and not torch.equal(on_the_fly, plain)
        prompts = {}
        for knowledge in ("prag", "combine"):
            a = answer_with_adapters(sm, fly, question, docs, knowledge=knowledge, max_new_tokens=4)
            b = answer_with_adapters(sm, stored, question, docs, knowledge=knowledge, max_new_tokens=4)
            assert a.text == b.text and a.usage.completion_tokens > 0
            prompts[knowledge] = a.usage.prompt_tokens
        assert prompts["prag"] < prompts["combine"]  # prag: the knowledge is in the adapters only
        assert torch.equal(sm.model(ids).logits, plain)  # nothing stays on the model after the calls


def test_a_paired_store_is_read_first_and_must_hold_the_translators_kind_of_adapter(sm, trained, prag_store):
    dyprag = DyPRAG.open(trained[0], sm.model)
    with DyPRAGAdapters.open(trained[0], sm.model, store=prag_store) as adapters:
        assert "harvard" in adapters and "new" not in adapters  # stored: no text needed
        stored = AdapterStore.open(prag_store).get("harvard")
        assert all(torch.equal(adapters.adapter("harvard")[key], value) for key, value in stored.items())
        assert adapters.identity(["harvard"])[2][0][0] == "stored" and not adapters._encoded
    other = AdapterStore.create(prag_store.parent / "rank4", sm.model, LoraSpec.for_model(sm.model, rank=4),
                                base_model_name="tiny")
    with pytest.raises(ArtifactError, match="pair the translator with a store it encoded"):
        DyPRAGAdapters(dyprag, store=other)


def test_the_encoded_cache_is_bounded_and_unknown_documents_are_named(sm, trained):
    dyprag = DyPRAG.open(trained[0], sm.model)
    with DyPRAGAdapters(dyprag, merge="sum", encoded_cache_size=1, text_cache_size=2) as adapters:
        for row in CORPUS:
            adapters.remember(row["id"], row)
        assert "harvard" not in adapters and "yale" in adapters  # the oldest text was dropped
        update = adapters.update_for(["yale", "new"])  # more documents than the cache holds still combine
        assert update.rank == 4 and list(adapters._encoded) == ["new"]
        with pytest.raises(UnknownDocumentError, match="no adapter and no text for document 'harvard'"):
            adapters.update_for(["harvard"])
    with pytest.raises(OptionError, match="merge"):
        DyPRAGAdapters(dyprag, merge="max")
    with pytest.raises(OptionError, match="text_cache_size"):
        DyPRAGAdapters(dyprag, text_cache_size=0)


def test_a_new_text_for_an_id_is_encoded_again_and_the_identity_names_translator_and_texts(sm, trained, tmp_path):
    dyprag = DyPRAG.open(trained[0], sm.model)
    with DyPRAGAdapters(dyprag) as adapters:
        adapters.remember("doc", CORPUS[0])
        before, key = adapters.update_for(["doc"]), adapters.identity(["doc"])
        adapters.remember("doc", CORPUS[0])  # the same text: nothing is encoded again
        assert adapters.update_for(["doc"]) is before and adapters.identity(["doc"]) == key
        adapters.remember("doc", CORPUS[2])
        after = adapters.update_for(["doc"])
        name = next(iter(dyprag.spec.modules))
        assert not torch.equal(after.factors[name][0], before.factors[name][0])
        assert adapters.identity(["doc"]) != key and adapters.identity(["doc"])[0] == \
            dyprag.manifest["files"]["translator.safetensors"]["sha256"]


def test_clear_cache_forgets_updates_and_generated_adapters_but_keeps_the_texts(sm, trained):
    dyprag = DyPRAG.open(trained[0], sm.model)
    with DyPRAGAdapters(dyprag) as adapters:
        adapters.remember("doc", CORPUS[0])
        before = adapters.update_for(["doc"])
        adapters.clear_cache()
        assert not adapters._cache and not adapters._encoded and "doc" in adapters
        again = adapters.update_for(["doc"])  # encoded anew from the remembered text: a new, equal update
        name = next(iter(dyprag.spec.modules))
        assert again is not before and torch.equal(again.factors[name][0], before.factors[name][0])


def test_a_text_remembered_while_an_update_is_made_never_takes_its_name(sm, trained):
    """Another call remembers a new text for the same id while this call's update is being encoded: the update
    and the identity (what names a served LoRA) both belong to the text read at the start, and the next call for
    the new text gets its own update, not the one cached meanwhile."""
    dyprag = DyPRAG.open(trained[0], sm.model)
    with DyPRAGAdapters(dyprag) as adapters, DyPRAGAdapters(dyprag) as reference:
        adapters.remember("doc", CORPUS[0])
        encode = dyprag.encode

        def encode_while_another_call_remembers(document):
            adapters.remember("doc", CORPUS[2])  # the other call, in between
            return encode(document)

        dyprag.encode = encode_while_another_call_remembers
        try:
            first, first_identity = adapters.update_and_identity(["doc"])
        finally:
            dyprag.encode = encode
        second, second_identity = adapters.update_and_identity(["doc"])
        reference.remember("a", CORPUS[0])
        reference.remember("b", CORPUS[2])
        name = next(iter(dyprag.spec.modules))
        assert torch.equal(first.factors[name][0], reference.update_for(["a"]).factors[name][0])
        assert torch.equal(second.factors[name][0], reference.update_for(["b"]).factors[name][0])
        assert first_identity == reference.identity(["a"]) and second_identity == reference.identity(["b"])


def test_a_document_with_nothing_to_read_counts_as_one_without_an_adapter(sm, trained):
    """SpringSynthesizer sends each node's title and text as its source; a node whose both are empty is not
    remembered, so missing_adapter decides instead of the translator refusing the empty text mid-call."""
    dyprag = DyPRAG.open(trained[0], sm.model)
    with DyPRAGAdapters(dyprag) as adapters:
        empty = ParametricDocument("doc-x", "title: Only a title", None, source={"title": "", "text": ""})
        adapters.prepare([empty])
        assert "doc-x" not in adapters
        call = plan_call(adapters, [empty], knowledge="combine", k=None, missing_adapter="icl")
        assert call.adapter_ids == []


def test_mean_merge_averages_the_factors_and_sum_stacks_them(sm, trained):
    dyprag = DyPRAG.open(trained[0], sm.model)
    with DyPRAGAdapters(dyprag) as mean, DyPRAGAdapters(dyprag, merge="sum") as total:
        assert mean.merge == "mean"  # the default: the paper's, and the better one measured
        for adapters in (mean, total):
            for row in CORPUS[:2]:
                adapters.remember(row["id"], row)
        name = next(iter(dyprag.spec.modules))
        a_mean, b_mean = mean.update_for(["harvard", "yale"]).factors[name]
        a_sum, b_sum = total.update_for(["harvard", "yale"]).factors[name]
        one, two = dyprag.encode(CORPUS[0]), dyprag.encode(CORPUS[1])
        assert a_mean.shape[0] == 2 and a_sum.shape[0] == 4
        torch.testing.assert_close(a_mean, (one[f"{name}.lora_A"] + two[f"{name}.lora_A"]) / 2)
        torch.testing.assert_close(b_sum @ a_sum, dyprag.spec.scale * (one[f"{name}.lora_B"] @ one[f"{name}.lora_A"]
                                                                       + two[f"{name}.lora_B"] @ two[f"{name}.lora_A"]))


# ----- other families ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_the_translator_trains_and_encodes_on_other_families(family, tmp_path):
    from families import FAMILIES, make_tokenizer

    tokenizer = make_tokenizer(FAMILIES[family].tokenizer)
    torch.manual_seed(0)
    model = FAMILIES[family].make(tokenizer).eval()
    sm = SpringModel(model, tokenizer)
    rows = {k: v for k, v in ROWS.items() if v["status"] == "ok"}
    parametrize(sm, rows, tmp_path / "prag", PragSettings(lr=2e-2, epochs=2), model_name=family, show_progress=False)
    before = weights_digest(model)
    report = train_dyprag(sm, rows, tmp_path / "prag", tmp_path / "t", DyPRAGSettings(width=8, lr=1e-3, epochs=3),
                          model_name=family, show_progress=False)
    assert weights_digest(model) == before and report.final["loss"] < report.first["loss"]
    adapters = open_artifact(tmp_path / "t", model)
    ids = torch.tensor([tokenizer("Where is Yale?")["input_ids"]])
    plain = model(ids).logits
    assert "yale" not in adapters  # neither stored nor told its text yet
    adapters.remember("yale", CORPUS[1])
    with adapters.activate(["yale"]):
        assert not torch.equal(model(ids).logits, plain)
    adapters.close()
    assert torch.equal(model(ids).logits, plain)
    modules = {name.rsplit(".", 2)[0] if family == "gpt2" else name for name in adapters.spec.modules}
    assert all(name.endswith(FAMILIES[family].mlp) for name in adapters.spec.modules) and len(modules) > 1
    assert set(adapters.adapter("yale")) == {f"{m}.lora_{p}" for m in adapters.spec.modules for p in "AB"}


# ----- command line ------------------------------------------------------------------------------------------


def test_cli_trains_resumes_encodes_and_refuses_bad_input_with_one_line(tiny_dir, prag_store, tmp_path, capsys):
    from spring_cli import main

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        return code, out, "\n".join(errors) + "\n" if code == 2 else err

    with pytest.raises(SystemExit):
        main(["parametrize", "--help"])
    help_text = capsys.readouterr().out
    assert "dyprag" in help_text and "--encode CORPUS --translator T" in help_text and "--kl-weight" in help_text

    aug = tmp_path / "aug.jsonl"
    aug.write_text("".join(json.dumps(row) + "\n" for row in ROWS.values()))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in CORPUS))
    model = ("--model", str(tiny_dir), "--quiet")
    train = ("parametrize", str(aug), "--method", "dyprag", "--store", str(prag_store), "--out",
             str(tmp_path / "t"), "--width", "8", "--lr", "3e-3", "--epochs", "2", *model)
    code, out, err = cli(*train)
    assert code == 0, err
    assert "trained on 2 documents (4 steps" in out and "1 without usable augmentation" in out
    code, _, err = cli(*train)
    assert code == 2 and err.count("\n") == 1 and "already holds a finished artifact" in err
    code, out, _ = cli("info", str(tmp_path / "t"))
    assert code == 0 and json.loads(out)["kind"] == "dyprag" and json.loads(out)["scores"]["documents"] == 2

    encode = ("parametrize", "--method", "dyprag", "--translator", str(tmp_path / "t"), "--encode", str(corpus),
              "--out", str(tmp_path / "encoded"), *model)
    code, out, err = cli(*encode)
    assert code == 0 and "3 documents encoded" in out, err
    code, out, _ = cli(*encode)
    assert code == 0 and "0 documents encoded" in out and "3 already there" in out
    code, out, _ = cli("info", str(tmp_path / "encoded"))
    assert code == 0 and json.loads(out)["documents"] == 3

    for bad, message in (
        (("parametrize", str(aug), "--method", "dyprag", "--out", str(tmp_path / "x"), *model), "--store STORE"),
        (("parametrize", "--method", "dyprag", "--encode", str(corpus), "--out", str(tmp_path / "x"), *model),
         "--encode needs --translator"),
        (("parametrize", str(aug), "--store", str(prag_store), "--out", str(tmp_path / "x"), *model),
         "--store belongs to --method dyprag"),
        (("parametrize", "--out", str(tmp_path / "x"), *model), "needs the augmented JSONL"),
    ):
        code, _, err = cli(*bad)
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()
