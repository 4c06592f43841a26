"""The evaluation harness on the tiny Llama: method prompts, resumable predictions, reports, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from spring_core import SpringModel, VirtualTokens
from spring_core.metrics import aggregate
from spring_core.prompts.layouts import DEFAULT_INSTRUCTION, build_prompt
from spring_train.evaluate import (
    EvalError,
    EvalPlan,
    Method,
    evaluate,
    load_datasets,
    parse_methods,
    prompt_for,
    record_metrics,
    write_report,
)

ROWS = [
    {"id": "a", "question": "What is the capital of Japan?", "answers": ["Tokyo"],
     "passages": [{"title": "Japan", "text": "The capital of Japan is Tokyo."}]},
    {"id": "b", "question": "Who wrote Hamlet?", "answers": ["Shakespeare", "William Shakespeare"],
     "passages": ["Hamlet is a play by William Shakespeare."]},
    {"id": "c", "question": "Where is the Eiffel Tower?", "answers": ["Paris"],
     "passages": ["The Eiffel Tower is in Paris, France.", "Rivers and mountains."]},
]


def test_methods_parse_with_clear_errors():
    methods = parse_methods("concat, spring,lora:closed-book")
    assert methods == [Method("concat"), Method("spring"), Method("lora", closed_book=True)]
    assert methods[2].label == "LoRA (no retrieval)"
    with pytest.raises(EvalError, match="unknown method 'rag'"):
        parse_methods("rag")
    with pytest.raises(EvalError, match="trained methods"):
        parse_methods("concat:closed-book")
    with pytest.raises(EvalError, match="--tokens"):
        EvalPlan(model="m", methods=parse_methods("spring"))
    with pytest.raises(EvalError, match="at least 1"):
        EvalPlan(model="m", methods=parse_methods("concat"), ks=[0])


def test_each_method_builds_the_prompt_it_promises(tiny):
    sm = SpringModel(*tiny)
    row = ROWS[0]
    concat = prompt_for(Method("concat"), sm, row, None)
    assert concat == build_prompt(row["question"], row["passages"], 0)
    closed = prompt_for(Method("closed-book"), sm, row, None)
    assert closed.render() == "Question: What is the capital of Japan?\nAnswer:"
    prompt = prompt_for(Method("prompt"), sm, row, None).render()
    assert prompt.index("Tokyo") < prompt.index(DEFAULT_INSTRUCTION) < prompt.index("Question:")
    chat = prompt_for(Method("prompt-chat"), sm, row, None)
    assert chat.render().startswith("<|im_start|>user\n") and chat.render().endswith("<|im_start|>assistant\n")
    assert not chat.special_tokens  # the template's own special tokens, none added on top
    assert prompt_for(Method("spring"), sm, row, 5) == {"question": row["question"], "passages": row["passages"],
                                                          "k": 5}
    assert prompt_for(Method("lora", closed_book=True), sm, row, None).render().startswith("Question:")


def test_evaluate_scores_resumes_and_reports(tiny, tmp_path):
    sm = SpringModel(tiny[0], tiny[1], VirtualTokens.random(tiny[0], 4, tokenizer=tiny[1]))
    plan = EvalPlan(model="tiny", methods=parse_methods("concat,spring"), ks=[1, 4], tokens="unused",
                    max_new_tokens=4, batch_size=2)
    loads = []

    def load(artifact):
        loads.append(artifact)
        return sm

    results = evaluate(plan, {"toy/dev": ROWS}, tmp_path, load=load, progress=lambda _: None)
    assert [(r["method"], r["k"]) for r in results] == [("Concat", None), ("SPRING", 1), ("SPRING", 4)]
    assert loads == [None, "unused"]
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 9
    spring_4 = [p for p in lines if p["k"] == 4]
    assert results[2]["em"] == aggregate([p["scores"] for p in spring_4])["em"]
    assert results[2]["count"] == 3 and results[2]["seconds_per_question"] > 0
    single = sm.generate(ROWS[1]["question"], ROWS[1]["passages"], k=4, max_new_tokens=4).text
    assert next(p for p in spring_4 if p["id"] == "b")["prediction"] == single

    # A killed run leaves a half-written last line: it is dropped and only that prediction is recomputed.
    text = (tmp_path / "predictions.jsonl").read_text()
    (tmp_path / "predictions.jsonl").write_text(text[:-20])
    again = evaluate(plan, {"toy/dev": ROWS}, tmp_path, load=load, progress=lambda _: None)
    drop_time = [{key: value for key, value in r.items() if key != "seconds_per_question"} for r in results]
    assert [{key: value for key, value in r.items() if key != "seconds_per_question"} for r in again] == drop_time
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 9

    paths = write_report(results, tmp_path, config={"limit": 3})
    assert "SPRING k=4" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes().startswith(b"\x89PNG")
    assert json.loads(paths["json"].read_text())["results"] == results
    (tmp_path / "single").mkdir()
    single_k = write_report([r for r in results if r["k"] != 1], tmp_path / "single", config={})
    assert "plot" not in single_k  # one k per method: nothing to plot against k


def test_a_rerun_recomputes_exactly_what_a_new_artifact_or_new_passages_change(tiny, tmp_path):
    folder = tmp_path / "tokens"
    VirtualTokens.random(tiny[0], 4, seed=1, tokenizer=tiny[1]).save(folder)

    def load(artifact):
        return SpringModel(*tiny, VirtualTokens.load(artifact) if artifact else None)

    plan = EvalPlan(model="tiny", methods=parse_methods("concat,spring"), ks=[4], tokens=str(folder),
                    max_new_tokens=4, batch_size=2)
    predictions = tmp_path / "out" / "predictions.jsonl"

    def run(rows):
        evaluate(plan, {"toy/dev": rows}, tmp_path / "out", load=load, progress=lambda _: None)
        return [json.loads(line) for line in predictions.read_text().splitlines()]

    assert len(run(ROWS)) == 6
    results = evaluate(plan, {"toy/dev": ROWS}, tmp_path / "out", load=load, progress=lambda _: None)
    record_metrics(folder, results)  # new metrics in the manifest do not change a prediction
    assert len(run(ROWS)) == 6

    retrained = VirtualTokens.random(tiny[0], 4, seed=2, tokenizer=tiny[1])
    retrained.save(folder)
    lines = run(ROWS)
    assert sorted((p["method"], p["id"]) for p in lines[6:]) == [("SPRING", "a"), ("SPRING", "b"), ("SPRING", "c")]
    fresh = SpringModel(*tiny, retrained).generate(ROWS[1]["question"], ROWS[1]["passages"], k=4, max_new_tokens=4)
    assert next(p for p in lines[6:] if p["id"] == "b")["prediction"] == fresh.text

    moved = [ROWS[0], ROWS[1], dict(ROWS[2], passages=ROWS[2]["passages"][:1])]
    lines = run(moved)
    assert sorted((p["method"], p["id"]) for p in lines[9:]) == [("Concat", "c"), ("SPRING", "c")]


def test_marginal_decodings_run_next_to_stuff_where_they_apply(tiny, tmp_path):
    sm = SpringModel(tiny[0], tiny[1], VirtualTokens.random(tiny[0], 2, tokenizer=tiny[1]))
    rows = [dict(ROWS[2], passage_scores=[3.0, 1.0])]
    plan = EvalPlan(model="tiny", methods=parse_methods("prompt,spring"), ks=[2], tokens="unused",
                    max_new_tokens=3, decodings=["stuff", "rag-token"])
    results = evaluate(plan, {"toy/dev": rows}, tmp_path, load=lambda _: sm, progress=lambda _: None)
    assert [(r["method"], r["decoding"]) for r in results] == [("Prompt", "stuff"), ("SPRING", "stuff"),
                                                           ("SPRING [rag-token]", "rag-token")]
    predicted = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()][-1]
    expected = sm.generate(rows[0]["question"], rows[0]["passages"], 2, decoding="rag-token", scores=[3.0, 1.0],
                           max_new_tokens=3)
    assert predicted["prediction"] == expected.text
    with pytest.raises(EvalError, match="unknown decoding"):
        EvalPlan(model="tiny", methods=parse_methods("concat"), decodings=["beam"])


def test_own_passages_files_keep_theirs_while_the_others_are_retrieved(tmp_path):
    own, retrieved = tmp_path / "hotpot" / "dev.jsonl", tmp_path / "squad" / "dev.jsonl"
    for path in (own, retrieved):
        path.parent.mkdir()
        path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "title": "", "text": text}) + "\n" for i, text in enumerate(
        ["Tokyo is the capital of Japan.", "Shakespeare wrote Hamlet.", "Paris has the Eiffel Tower."])))
    datasets = load_datasets([str(own), str(retrieved)], limit=None, passages=1, corpus=str(corpus),
                             cache_dir=tmp_path / "cache", own_passages=[str(own)])
    assert [row["passages"] for row in datasets["hotpot/dev"]] == [row["passages"] for row in ROWS]
    assert "passage_scores" not in datasets["hotpot/dev"][0]
    squad = datasets["squad/dev"]
    assert [row["passages"][0]["text"] for row in squad] == ["Tokyo is the capital of Japan.",
                                                              "Shakespeare wrote Hamlet.",
                                                              "Paris has the Eiffel Tower."]
    assert all(len(row["passage_scores"]) == 1 for row in squad)
    with pytest.raises(EvalError, match="not --data files"):
        load_datasets([str(retrieved)], limit=None, passages=1, corpus=str(corpus), cache_dir=tmp_path / "cache",
                      own_passages=[str(own)])


def test_cli_eval_end_to_end(tiny_dir, tiny, tmp_path):
    VirtualTokens.random(tiny[0], 3, tokenizer=tiny[1]).save(tmp_path / "tokens")
    data = tmp_path / "toy" / "dev.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    command = [sys.executable, "-m", "spring_cli", "eval", "--model", str(tiny_dir), "--data", str(data),
               "--methods", "closed-book,prompt,spring", "--tokens", str(tmp_path / "tokens"), "--k", "1,3",
               "--max-new-tokens", "3", "--out", str(tmp_path / "eval")]
    result = subprocess.run(command + ["--record-metrics"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    recorded = VirtualTokens.load(tmp_path / "tokens").manifest["metrics"]
    assert set(recorded["eval"]) == {"toy/dev k=1", "toy/dev k=3"} and recorded["settings"]["limit"] is None
    assert "toy/dev EM" in result.stdout and "SPRING k=3" in result.stdout
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert report["config"]["tokens"] == "tokens" and len(report["results"]) == 4
    assert (tmp_path / "eval" / "em_f1_vs_k.png").is_file()

    too_many = subprocess.run(command[:-2] + ["--k", "9", "--out", str(tmp_path / "e2")], capture_output=True,
                              text=True)
    assert too_many.returncode == 2 and "k = 9 is out of range" in too_many.stderr
