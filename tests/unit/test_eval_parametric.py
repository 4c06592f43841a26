"""`spring-rag eval` with parametric knowledge on the tiny Llama: a real PRAG store (trained here) and a DyPRAG
translator as --adapters, the knowledge modes as result rows, answers that the adapters change, and bad combinations
refused with one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from augmented_rows import AUGMENTED, corpus_rows

from spring_core import SpringModel
from spring_core.model.loading import load_model
from spring_core.parametric import LoraSpec
from spring_core.parametric.dyprag import DyPRAG, DyPRAGConfig, ParameterTranslator
from spring_train.evaluate import EvalError, EvalPlan, documents_for, parse_methods
from spring_train.parametrize import PolySettings, PragSettings, parametrize, train_poly

CORPUS = corpus_rows(AUGMENTED)
CORPUS.append({"id": "mit", "title": "MIT", "text": "MIT was founded in 1861 in Boston."})  # no adapter for it
QUESTIONS = [{"id": "q1", "question": "Who is Harvard University named after?", "answers": ["John Harvard"]},
             {"id": "q2", "question": "Where is Yale University?", "answers": ["New Haven"]}]


@pytest.fixture(scope="module")
def files(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """The QA file (questions only: passages come from the corpus), the corpus, a PRAG store and Poly-PRAG experts
    for two of its three documents, a DyPRAG translator, and the QA file again with the gold passages in the rows
    (no ids)."""
    root = tmp_path_factory.mktemp("eval-parametric")
    sm = SpringModel(*load_model(str(tiny_dir)))
    parametrize(sm, AUGMENTED, root / "store", PragSettings(lr=2e-2, epochs=3), model_name="tiny",
                show_progress=False)
    poly, _ = train_poly(sm, AUGMENTED, PolySettings(experts=4, top_experts=2, lr=1e-2, routing_lr=5e-2, epochs=2,
                                                     batch_size=2), show_progress=False)
    poly.save(root / "poly", base_model_name="tiny")
    spec = LoraSpec.for_model(sm.model, rank=2, alpha=32)
    DyPRAG(ParameterTranslator(DyPRAGConfig.for_model(sm.model, spec, width=8, init_std=0.2)), sm.model,
           sm.tokenizer).save(root / "translator", base_model_name="tiny")
    (root / "toy").mkdir()
    (root / "toy" / "dev.jsonl").write_text("".join(json.dumps(row) + "\n" for row in QUESTIONS))
    (root / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in CORPUS))
    gold = [{**row, "passages": [{"title": doc["title"], "text": doc["text"]}]}
            for row, doc in zip(QUESTIONS, CORPUS[:2], strict=True)]
    (root / "gold").mkdir()
    (root / "gold" / "dev.jsonl").write_text("".join(json.dumps(row) + "\n" for row in gold))
    return {"root": root, "model": tiny_dir, "data": root / "toy" / "dev.jsonl", "corpus": root / "corpus.jsonl",
            "store": root / "store", "translator": root / "translator", "poly": root / "poly",
            "gold": root / "gold" / "dev.jsonl"}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    from spring_cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The one ``error:`` line of a refused command (stderr may also hold a progress bar), with no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def eval_args(files: dict[str, Path], out: str, *extra: str, data: str = "data") -> list[str]:
    return ["eval", "--model", str(files["model"]), "--data", str(files[data]), "--max-new-tokens", "4",
            "--out", str(files["root"] / out), *extra]


def predictions(folder: Path) -> dict[str, dict[str, str]]:
    """``{method label: {question id: prediction}}``."""
    found: dict[str, dict[str, str]] = {}
    for line in (folder / "predictions.jsonl").read_text().splitlines():
        item = json.loads(line)
        found.setdefault(item["method"], {})[item["id"]] = item["prediction"]
    return found


def test_a_prag_store_answers_in_every_mode_and_the_adapters_change_the_answers(files, capsys):
    args = eval_args(files, "prag", "--corpus", str(files["corpus"]), "--passages", "1", "--methods",
                     "closed-book,concat", "--knowledge", "icl,prag,combine", "--adapters", str(files["store"]))
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    progress = [line for line in out.splitlines() if line.startswith("toy/dev")]  # one line per result, as it ends
    assert [line.split("EM")[0].split()[1:] for line in progress] == [
        ["Closed-book"], ["Concat"], ["Concat", "[prag]"], ["Concat", "[combine]"]]
    report = json.loads((files["root"] / "prag" / "results.json").read_text())
    assert report["config"]["knowledge"] == "icl,prag,combine" and report["config"]["adapters"] == "store"
    modes = {row["method"]: (row["knowledge"], row["adapters"]) for row in report["results"]}
    assert modes == {"Closed-book": ("icl", None), "Concat": ("icl", None), "Concat [prag]": ("prag", "store"),
                     "Concat [combine]": ("combine", "store")}
    answers = predictions(files["root"] / "prag")
    # prag's prompt is closed-book's (the question alone): only the documents' adapters can change its answers
    assert answers["Concat [prag]"] != answers["Closed-book"]
    assert answers["Concat [prag]"] != answers["Concat"] and answers["Concat [combine]"] != answers["Concat"]

    lines = (files["root"] / "prag" / "predictions.jsonl").read_text()
    assert cli(capsys, *args)[0] == 0  # a rerun resumes: nothing is answered again
    assert (files["root"] / "prag" / "predictions.jsonl").read_text() == lines


def test_a_passage_the_store_lacks_stops_the_run_before_it_starts_unless_read_as_text(files, capsys, caplog):
    args = eval_args(files, "missing", "--corpus", str(files["corpus"]), "--passages", "3", "--methods", "concat",
                     "--knowledge", "prag", "--adapters", str(files["store"]))
    code, _, err = cli(capsys, *args)
    assert code == 2
    err = one_error_line(err)
    assert "2 of the 6 passages have no adapter" in err and "mit" in err and "--missing-adapter icl" in err
    assert not (files["root"] / "missing" / "predictions.jsonl").exists()
    with caplog.at_level(logging.WARNING):
        code, _, err = cli(capsys, *args, "--missing-adapter", "icl")
    assert code == 0, err
    said = [record.getMessage() for record in caplog.records if "no adapter" in record.getMessage()]
    assert len(said) == 1 and said[0].startswith("2 passage(s) have no adapter"), said  # once, not per question
    assert len(predictions(files["root"] / "missing")["Concat [prag]"]) == 2
    report = json.loads((files["root"] / "missing" / "results.json").read_text())
    assert [row["without_adapter"] for row in report["results"]] == [2]  # mit, read as text for both questions


def test_spring_tokens_with_combine_and_marginal_decoding_with_adapters(files, capsys):
    from spring_core import VirtualTokens

    tiny = load_model(str(files["model"]))
    VirtualTokens.random(tiny[0], 3, tokenizer=tiny[1]).save(files["root"] / "tokens")
    args = eval_args(files, "spring", "--corpus", str(files["corpus"]), "--passages", "2", "--methods",
                     "concat,spring", "--tokens", str(files["root"] / "tokens"), "--k", "2", "--knowledge",
                     "icl,prag,combine", "--adapters", str(files["store"]), "--decoding", "stuff,rag-token",
                     "--missing-adapter", "icl")
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    answers = predictions(files["root"] / "spring")
    assert set(answers) == {"Concat", "Concat [prag]", "Concat [combine]", "Concat [rag-token]",
                            "Concat [combine, rag-token]", "SPRING", "SPRING [prag]", "SPRING [combine]",
                            "SPRING [rag-token]", "SPRING [combine, rag-token]"}  # prag has nothing to marginalise
    assert answers["SPRING [combine]"] != answers["SPRING"]  # combine + SPRING: the adapters change the answers
    assert answers["Concat [combine, rag-token]"] != answers["Concat [rag-token]"]


def test_poly_prag_experts_route_the_retrieved_documents(files, capsys):
    args = eval_args(files, "poly", "--corpus", str(files["corpus"]), "--passages", "1", "--methods",
                     "closed-book,concat", "--knowledge", "prag", "--adapters", str(files["poly"]))
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    answers = predictions(files["root"] / "poly")
    assert answers["Concat [prag]"] != answers["Closed-book"]


def test_a_dyprag_translator_encodes_the_rows_own_passages_on_the_fly(files, capsys):
    args = eval_args(files, "dyprag", "--methods", "closed-book,concat", "--knowledge", "prag",
                     "--adapters", str(files["translator"]), data="gold")
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    answers = predictions(files["root"] / "dyprag")
    assert set(answers) == {"Closed-book", "Concat [prag]"}  # prag only: no icl Concat
    assert answers["Concat [prag]"] != answers["Closed-book"]
    report = json.loads((files["root"] / "dyprag" / "results.json").read_text())
    assert {row["adapters"] for row in report["results"] if row["knowledge"] == "prag"} == {"translator"}


@pytest.mark.parametrize(("extra", "message"), [
    (["--knowledge", "prag"], "--knowledge prag needs --adapters"),
    (["--adapters", "x"], "--adapters is read only by --knowledge prag or combine"),
    (["--knowledge", "icl,parametric", "--adapters", "x"], "unknown knowledge mode(s) ['parametric']"),
    (["--knowledge", "combine", "--adapters", "x", "--methods", "closed-book,prompt"],
     "applies to the methods concat and spring"),
])
def test_bad_combinations_exit_2_with_one_error_line(files, capsys, extra, message):
    code, _, err = cli(capsys, *eval_args(files, "bad", *extra))
    assert code == 2 and message in one_error_line(err)


def test_documents_take_corpus_ids_then_passage_ids_then_a_text_key_only_for_translators():
    row = {"passages": [{"title": "A", "text": "a"}, "b"], "passage_ids": ["doc-a", "doc-b"], "passage_scores": [2, 1]}
    assert [(d.adapter_id, d.score) for d in documents_for(row)] == [("doc-a", 2), ("doc-b", 1)]
    own = {"passages": [{"id": "mine", "text": "a"}, "b"]}
    assert [d.adapter_id for d in documents_for(own)] == ["mine", None]
    keyed = documents_for(own, by_text=True)
    assert keyed[0].adapter_id == "mine" and keyed[1].adapter_id.startswith("text-")
    assert keyed[1].adapter_id == documents_for({"passages": ["b"]}, by_text=True)[0].adapter_id  # the text decides
    with pytest.raises(EvalError, match="unknown --missing-adapter rule .skip."):
        EvalPlan(model="m", methods=parse_methods("concat"), knowledge=["prag"], adapters="x", missing_adapter="skip")
