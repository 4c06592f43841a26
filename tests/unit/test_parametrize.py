"""PRAG offline: augmentation (parse, retry, resume) and per-document LoRA encoding on the tiny Llama."""

from __future__ import annotations

import json

import pytest
import torch

from spring_core import SpringModel
from spring_core.errors import DataError, SpringError
from spring_core.model.loading import load_model
from spring_core.parametric import AdapterStore, DocumentAdapters, LoraSpec, UnknownDocumentError
from spring_core.types import Generation
from spring_train.augment import augment_corpus, parse_qa, read_augmented
from spring_train.augment_prompts import PROMPT_VERSION
from spring_train.batching import collate
from spring_train.parametrize import (
    PragSettings,
    document_examples,
    parametrize,
    shared_initialisation,
    train_group,
)

CORPUS = [
    {"id": "harvard", "title": "Harvard", "text": "Harvard University is named after John Harvard, a minister."},
    {"id": "yale", "title": "Yale", "text": "Yale University is in New Haven, Connecticut."},
    {"id": "mit", "title": "MIT", "text": "MIT was founded in 1861 in Boston."},
]
GOOD_QA = '[{"question": "Who is Harvard named after?", "answer": "John Harvard"}, {"question": "What was John ' \
          'Harvard?", "answer": "a minister"}]'


class ScriptedModel(SpringModel):
    """The tiny SpringModel, but its augmentation answers come from a script: JSON for some ids, junk for others."""

    def __init__(self, model, tokenizer, answers: dict[str, list[str]]):
        super().__init__(model, tokenizer)
        self.answers = answers
        self.calls: list[str] = []

    def _answer(self, prompt) -> Generation:
        prompt = self.as_parts(prompt).plain_text()
        doc = next(row["id"] for row in CORPUS if row["text"] in prompt)
        self.calls.append(doc)
        if "Rewrite" in prompt:
            return Generation(text=f"Rewritten: {next(r['text'] for r in CORPUS if r['id'] == doc)}")
        script = self.answers[doc]
        return Generation(text=script.pop(0) if len(script) > 1 else script[0])

    def generate_batch(self, items, *, batch_size=8, **settings):
        return [self._answer(item) for item in items]

    def generate_from_prompt(self, prompt, **settings):
        return self._answer(prompt)


@pytest.fixture()
def tiny_sm(tiny_dir):
    return SpringModel(*load_model(str(tiny_dir)))


def augmented_rows() -> dict[str, dict]:
    return {
        "harvard": {"id": "harvard", "title": "Harvard", "text": CORPUS[0]["text"], "status": "ok",
                    "rewrite": "John Harvard, a minister, gave Harvard University its name.",
                    "qa": [{"question": "Who is Harvard named after?", "answer": "John Harvard"}]},
        "yale": {"id": "yale", "title": "Yale", "text": CORPUS[1]["text"], "status": "ok",
                 "rewrite": "New Haven, Connecticut is home to Yale University.",
                 "qa": [{"question": "Where is Yale?", "answer": "New Haven"}]},
        "mit": {"id": "mit", "status": "failed", "error": "no JSON"},
    }


# ----- augmentation ------------------------------------------------------------------------------------------


def test_parse_qa_reads_lists_loose_objects_and_says_why_it_fails():
    assert parse_qa(f"Here you go:\n{GOOD_QA}\nDone.") == [
        {"question": "Who is Harvard named after?", "answer": "John Harvard"},
        {"question": "What was John Harvard?", "answer": "a minister"},
    ]
    broken_list = '[{"question": "When?", "answer": 1861}, {"question": "Where?", "answer": "Boston"'
    assert parse_qa(broken_list) == [{"question": "When?", "answer": "1861"}]
    assert len(parse_qa('[{"question": "A?", "answer": "a"}, {"question": "a?", "answer": "b"}]')) == 1  # duplicate
    with pytest.raises(ValueError, match="no JSON list or object"):
        parse_qa("Harvard is a university.")
    with pytest.raises(ValueError, match=r"1 usable question/answer pair\(s\).*need 2"):
        parse_qa('[{"question": "Q?", "answer": "A"}, {"question": "", "answer": "x"}]', min_pairs=2)


def test_augment_retries_records_failures_and_resumes(tiny_dir, tmp_path):
    model, tokenizer = load_model(str(tiny_dir))
    out = tmp_path / "aug.jsonl"
    answers = {"harvard": [GOOD_QA], "yale": ["not json", GOOD_QA.replace("Harvard", "Yale")], "mit": ["nope"]}
    sm = ScriptedModel(model, tokenizer, answers)
    report = augment_corpus(sm, CORPUS, out, max_attempts=2, show_progress=False)
    assert (report.ok, report.failed, report.skipped) == (2, 1, 0)
    rows = read_augmented(out)
    assert rows["harvard"]["attempts"] == 1 and rows["yale"]["attempts"] == 2  # yale parsed on its retry
    assert rows["mit"]["status"] == "failed" and "no JSON list or object" in rows["mit"]["error"]
    assert rows["harvard"]["rewrite"].startswith("Rewritten:") and rows["harvard"]["prompt_version"] == PROMPT_VERSION
    assert report.failures == {"mit": rows["mit"]["error"]}

    sm.calls.clear()
    again = augment_corpus(sm, CORPUS, out, show_progress=False)
    assert (again.ok, again.failed, again.skipped) == (0, 0, 3) and sm.calls == []
    sm.answers["mit"] = [GOOD_QA.replace("Harvard", "MIT")]
    retried = augment_corpus(sm, CORPUS, out, retry_failed=True, show_progress=False)
    assert (retried.ok, retried.skipped) == (1, 2) and read_augmented(out)["mit"]["status"] == "ok"


def test_a_half_written_last_line_is_redone_and_a_bad_line_is_named(tmp_path):
    out = tmp_path / "aug.jsonl"
    good = json.dumps({"id": "a", "status": "failed", "error": "x"})
    out.write_text(good + "\n" + '{"id": "b", "sta')
    assert list(read_augmented(out)) == ["a"] and out.read_text() == good + "\n"
    out.write_text(good + "\n" + json.dumps({"id": "b", "status": "ok", "qa": []}) + "\n")
    with pytest.raises(DataError, match=r"aug.jsonl:2: an 'ok' document needs 'qa' \(a non-empty list\)"):
        read_augmented(out)


def test_augment_with_the_real_tiny_model_fails_cleanly_on_its_noise(tiny_sm, tmp_path):
    report = augment_corpus(tiny_sm, CORPUS[:2], tmp_path / "aug.jsonl", max_attempts=2, max_new_tokens=8,
                            show_progress=False)
    assert report.ok + report.failed == 2
    rows = read_augmented(tmp_path / "aug.jsonl")
    assert all(row["attempts"] == 2 and row["error"] for row in rows.values() if row["status"] == "failed")


# ----- encoding ----------------------------------------------------------------------------------------------


def test_each_qa_pair_trains_with_passage_with_rewrite_and_alone(tiny_sm):
    examples = document_examples(tiny_sm, augmented_rows()["harvard"], 32)
    texts = [tiny_sm.tokenizer.decode(e.input_ids) for e in examples]
    assert len(examples) == 3
    assert "minister" in texts[0] and "gave Harvard" in texts[1] and "minister" not in texts[2]
    assert all("Who is Harvard named after?" in text and text.rstrip().endswith("John Harvard<|im_end|>")
               for text in texts)


def test_documents_trained_side_by_side_get_the_adapters_they_would_get_alone(tiny_sm):
    settings = PragSettings(lr=1e-2, epochs=2)
    spec = LoraSpec.for_model(tiny_sm.model, rank=2, alpha=32)
    from spring_core.parametric import AdapterHooks

    hooks = AdapterHooks(tiny_sm.model, list(spec.modules))
    init = shared_initialisation(spec, 0)
    rows = augmented_rows()
    group = [(doc, document_examples(tiny_sm, rows[doc], 32)) for doc in ("harvard", "yale")]
    together = train_group(tiny_sm.model, hooks, spec, init, group, settings, pad_id=tiny_sm.pad_token_id)
    for item in group:
        alone = train_group(tiny_sm.model, hooks, spec, init, [item], settings, pad_id=tiny_sm.pad_token_id)[item[0]]
        for key, value in alone.items():
            torch.testing.assert_close(together[item[0]][key], value, rtol=1e-4, atol=1e-5)
    assert not torch.equal(together["harvard"][f"{next(iter(spec.modules))}.lora_B"],
                           init[f"{next(iter(spec.modules))}.lora_B"])


def test_parametrize_fills_a_store_resumes_and_lowers_the_documents_loss(tiny_sm, tmp_path):
    settings = PragSettings(lr=2e-2, epochs=3, docs_per_batch=1)
    rows = augmented_rows()
    report = parametrize(tiny_sm, rows, tmp_path / "store", settings, model_name="tiny", show_progress=False)
    assert (report.encoded, report.not_augmented) == (2, ["mit"])
    store = AdapterStore.open(tmp_path / "store", model=tiny_sm.model)
    assert sorted(store.ids()) == ["harvard", "yale"] and store.manifest["encoding"]["method"] == "prag"

    examples = document_examples(tiny_sm, rows["harvard"], 32)
    batch = collate(examples, tiny_sm.pad_token_id)

    def loss() -> float:
        from spring_train.batching import answer_loss_sum

        with torch.no_grad():
            logits = tiny_sm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
        return float(answer_loss_sum(logits[:, -batch.labels.shape[1] - 1:], batch.labels))

    before = loss()
    with DocumentAdapters(store, tiny_sm.model).activate(["harvard"]):
        after = loss()
    assert after < before * 0.9

    again = parametrize(tiny_sm, rows, tmp_path / "store", PragSettings(lr=2e-2, epochs=3, docs_per_batch=4),
                        model_name="tiny", show_progress=False)
    assert (again.encoded, again.skipped) == (0, 2)
    with pytest.raises(SpringError, match="encoded with other settings"):
        parametrize(tiny_sm, rows, tmp_path / "store", PragSettings(rank=4), model_name="tiny", show_progress=False)


# ----- Poly-PRAG ---------------------------------------------------------------------------------------------


def test_sparse_routing_keeps_the_top_experts_of_the_mean_and_mixes_their_factors():
    from spring_core.parametric.poly import mix_experts, sparse_routing

    logits = torch.tensor([[4.0, 0.0, 0.0, 2.0], [4.0, 0.0, 3.0, 0.0]])
    weights = sparse_routing(logits, top_experts=2)
    mean = torch.softmax(logits, -1).mean(0)
    assert weights[1] == 0 and weights[3] == 0 and float(weights.sum()) == pytest.approx(1.0)
    assert float(weights[0] / weights[2]) == pytest.approx(float(mean[0] / mean[2]))
    experts = {"m.lora_A": torch.arange(8.0).view(4, 2, 1)}
    mixed = mix_experts(experts, torch.tensor([0.5, 0.0, 0.5, 0.0]))["m.lora_A"]
    assert torch.equal(mixed, (experts["m.lora_A"][0] + experts["m.lora_A"][2]) / 2)


def test_poly_trains_saves_reopens_and_adds_a_document_with_frozen_experts(tiny_sm, tmp_path, tiny_dir):
    from conftest import make_tiny_model

    from spring_core.errors import ArtifactError, ModelMismatchError
    from spring_core.parametric.poly import PolyAdapters
    from spring_train.parametrize import PolySettings, add_poly_documents, train_poly

    rows = augmented_rows()
    settings = PolySettings(experts=4, top_experts=2, lr=1e-2, routing_lr=5e-2, epochs=2, batch_size=2)
    poly, report = train_poly(tiny_sm, {k: rows[k] for k in ("harvard", "mit")}, settings, show_progress=False)
    assert (report.encoded, report.not_augmented) == (1, ["mit"]) and poly.doc_ids == ["harvard"]
    ids = torch.tensor([tiny_sm.tokenizer("Question: Who is Harvard named after?\nAnswer:")["input_ids"]])
    plain = tiny_sm.model(ids).logits
    with poly.activate(["harvard"]):
        routed = tiny_sm.model(ids).logits
    assert not torch.equal(routed, plain) and torch.equal(tiny_sm.model(ids).logits, plain)

    poly.save(tmp_path / "poly", base_model_name="tiny")
    reopened = PolyAdapters.open(tmp_path / "poly", tiny_sm.model)
    with reopened.activate(["harvard"]):
        assert torch.equal(tiny_sm.model(ids).logits, routed)
    experts_before = {k: v.clone() for k, v in reopened.experts.items()}
    added = add_poly_documents(tiny_sm, reopened, rows, settings, show_progress=False)
    assert (added.encoded, added.skipped, added.not_augmented) == (1, 1, ["mit"])
    assert reopened.doc_ids == ["harvard", "yale"] and reopened.routing.shape == (2, 4)
    assert all(torch.equal(experts_before[k], v) for k, v in reopened.experts.items())
    with reopened.activate(["harvard", "yale"]):
        assert not torch.equal(tiny_sm.model(ids).logits, plain)
    with pytest.raises(UnknownDocumentError, match="mit"):
        reopened.update_for(["mit"])

    other = make_tiny_model(tmp_path / "other", load_model(str(tiny_dir))[1], seed=7)
    with pytest.raises(ModelMismatchError):
        PolyAdapters.open(tmp_path / "poly", other)
    (tmp_path / "poly" / "routing.safetensors").write_bytes(b"broken")
    with pytest.raises(ArtifactError, match="does not match the SHA-256"):
        PolyAdapters.open(tmp_path / "poly", tiny_sm.model)


# ----- command line ------------------------------------------------------------------------------------------


def test_cli_augment_parametrize_and_info_end_to_end(tiny_dir, tmp_path, capsys):
    from spring_cli import main

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in CORPUS))
    code, out, _ = cli("augment", str(corpus), "--out", str(tmp_path / "noise.jsonl"), "--model", str(tiny_dir),
                       "--limit", "2", "--max-attempts", "1", "--quiet")
    assert code == 0 and "already done" in out and len(read_augmented(tmp_path / "noise.jsonl")) == 2

    aug = tmp_path / "aug.jsonl"
    aug.write_text("".join(json.dumps(row) + "\n" for row in augmented_rows().values()))
    code, out, _ = cli("parametrize", str(aug), "--out", str(tmp_path / "store"), "--model", str(tiny_dir), "--quiet")
    assert code == 0 and "2 documents encoded" in out and "1 without usable augmentation" in out
    code, out, _ = cli("info", str(tmp_path / "store"))
    assert code == 0 and json.loads(out)["documents"] == 2

    poly = ["parametrize", str(aug), "--method", "poly", "--out", str(tmp_path / "poly"), "--model", str(tiny_dir),
            "--quiet"]
    assert cli(*poly, "--experts", "3")[0] == 0
    code, _, err = cli(*poly)
    assert code == 2 and "pass --add" in err
    code, out, _ = cli(*poly, "--add")
    assert code == 0 and "0 documents encoded" in out and "2 already there" in out

    aug.write_text(json.dumps(augmented_rows()["harvard"]) + "\n{not json\n")
    code, _, err = cli("parametrize", str(aug), "--out", str(tmp_path / "s2"), "--model", str(tiny_dir))
    assert code == 2 and "aug.jsonl:2" in err


def test_cloze_augmentation_needs_no_model_and_blanks_numbers_and_names(tmp_path):
    from spring_train.augment import cloze_pairs

    pairs = cloze_pairs("mit", "MIT was founded in 1861 in Boston. It moved to Cambridge in 1916.", count=3)
    assert len(pairs) == 2  # one pair per sentence
    for pair in pairs:
        assert pair["question"].startswith("Fill in the blank: ") and "____" in pair["question"]
        assert pair["answer"] in ("1861", "Boston", "1916", "Cambridge")
    assert cloze_pairs("mit", CORPUS[2]["text"], seed=1) == cloze_pairs("mit", CORPUS[2]["text"], seed=1)
    report = augment_corpus(None, CORPUS + [{"id": "bare", "title": "", "text": "nothing to ask here."}],
                            tmp_path / "cloze.jsonl", augmenter="cloze", show_progress=False)
    rows = read_augmented(tmp_path / "cloze.jsonl")
    assert (report.ok, report.failed) == (3, 1) and "need 1" in rows["bare"]["error"]
    assert rows["mit"]["rewrite"] is None and rows["mit"]["prompt_version"] == "cloze-v1"
    with pytest.raises(SpringError, match="needs a model"):
        augment_corpus(None, CORPUS, tmp_path / "x.jsonl")


def test_the_prompts_own_example_is_not_taken_for_a_pair():
    with pytest.raises(ValueError, match="0 usable"):
        parse_qa('[{"question": "What is the capital of France?", "answer": "Paris"}]')
