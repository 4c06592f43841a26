"""The evaluation harness behind ``spring-rag eval``: the paper's baselines and SPRING at any k, EM / F1 / Acc.

Methods (``--methods``; ``:closed-book`` after a trained method drops the passages, the paper's non-RAG setting):

=================  ==========================================================================================
``closed-book``    the base model, question only (``Question: q\\nAnswer:``)
``concat``         the base model, passages then question (the SPRING layout with no tokens)
``prompt``         ``concat`` with the paper's instruction between passages and question
``prompt-chat``    the same instruction in the model's chat template (a fair chance for instruct models)
``spring``         trained virtual tokens, once per ``k``
``lora``           a LoRA artifact merged into the model, ``concat`` prompt (its training layout)
``prefix``         a prefix-tuning artifact, ``concat`` prompt
``spring+``        virtual tokens trained on top of a LoRA, once per ``k``
=================  ==========================================================================================

``knowledge`` reads the passages as document knowledge (Parametric RAG) for the methods in the SPRING layout on the
base model, ``concat`` and ``spring``: ``icl`` (default) puts them in the prompt, ``prag`` applies the documents'
adapters from ``adapters`` (a PRAG store, Poly-PRAG experts, or a DyPRAG translator, which encodes each passage
when first asked for it) with the question alone in the prompt, ``combine`` does both (with ``spring``:
combine + SPRING). A passage's adapter id is its corpus id when it was retrieved (``--corpus``/``--store``), else
the ``"id"`` of a row's own passage; a DyPRAG translator keys a passage without an id by its text. A passage whose
adapter the store lacks is refused before any answer with adapters, or with ``missing_adapter="icl"`` read as text.

``decodings`` adds RAG-Token / RAG-Sequence decoding (passages read one by one, weighted by their retriever scores)
next to the default ``stuff`` decoding for the methods in the SPRING layout (concat, spring, spring+, lora, prefix).

Predictions are appended to ``predictions.jsonl`` as each batch finishes, so an interrupted run resumes where it
stopped. Each line carries a digest of what produced it (model, artifact files, generation length, the question
and its passages), so a rerun after retraining an artifact or changing the retrieval recomputes exactly the
predictions it changed; the stale lines stay in the file and are ignored.

EM, F1 and Acc use the SQuAD normalisation on the whole prediction (no truncation); the ``*_line`` variants score
only its first line.

Example:
    >>> from spring_core.data import read_qa
    >>> plan = EvalPlan(model="./my-llama", methods=parse_methods("concat,spring"), ks=[1, 10],
    ...                 tokens="my-tokens/", max_new_tokens=4)
    >>> rows = evaluate(plan, {"squad/dev": read_qa("train.jsonl")[:4]}, out="eval/", progress=lambda _: None)
    >>> [(row["method"], row["k"], row["count"]) for row in rows]
    [('Concat', None, 4), ('SPRING', 1, 4), ('SPRING', 10, 4)]
    >>> sum(1 for _ in open("eval/predictions.jsonl"))       # one line per question, method and k
    12
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spring_core.artifacts.manifest import MANIFEST_NAME, atomic_write_bytes, sha256_file
from spring_core.errors import DataError, SpringError
from spring_core.metrics import aggregate, first_line, score
from spring_core.model.spring_model import SpringModel
from spring_core.model.tokens import resolve_artifact
from spring_core.options import DECODINGS, KNOWLEDGE, MISSING_ADAPTER
from spring_core.parametric.online import MISSING_ADAPTER_WARNING, ParametricDocument
from spring_core.parametric.online import logger as online_logger
from spring_core.prompts.layouts import DEFAULT_INSTRUCTION, build_prompt, format_passages, render_chat
from spring_core.types import PromptParts

logger = logging.getLogger("spring_rag.eval")

METHODS = ("closed-book", "concat", "prompt", "prompt-chat", "spring", "lora", "prefix", "spring+")
LABELS = {"closed-book": "Closed-book", "concat": "Concat", "prompt": "Prompt", "prompt-chat": "Prompt-chat",
          "spring": "SPRING", "lora": "LoRA", "prefix": "Prefix", "spring+": "SPRING+"}
TRAINED = {"spring": "tokens", "lora": "lora", "prefix": "prefix", "spring+": "spring_plus"}
PREDICTIONS = "predictions.jsonl"


class EvalError(SpringError):
    """An evaluation setting is missing or inconsistent (e.g. ``spring`` without ``--tokens``)."""


@dataclass(frozen=True)
class Method:
    """One method to evaluate; ``closed_book`` drops the passages (only meaningful for trained methods)."""

    key: str
    closed_book: bool = False

    @property
    def marginal(self) -> bool:
        """Whether RAG-Token/RAG-Sequence decoding applies: a method in the SPRING layout that reads passages."""
        return self.key in ("concat", "spring", "spring+", "lora", "prefix") and not self.closed_book

    @property
    def parametric(self) -> bool:
        """Whether the knowledge modes apply: a method in the SPRING layout on the base model that reads passages."""
        return self.key in ("concat", "spring") and not self.closed_book

    @property
    def label(self) -> str:
        return LABELS[self.key] + (" (no retrieval)" if self.closed_book else "")


def parse_methods(text: str) -> list[Method]:
    """``"concat,spring,lora:closed-book"`` -> methods; unknown names raise ``EvalError`` listing the known ones."""
    methods = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        key, _, suffix = item.partition(":")
        if key not in METHODS:
            raise EvalError(f"unknown method {key!r}; choose from {', '.join(METHODS)}")
        if suffix not in ("", "closed-book"):
            raise EvalError(f"unknown method suffix {suffix!r} in {item!r}; the only suffix is ':closed-book'")
        if suffix and key not in TRAINED:
            raise EvalError(f"{item!r}: ':closed-book' applies to trained methods; use the method 'closed-book'")
        methods.append(Method(key, bool(suffix)))
    if not methods:
        raise EvalError("no methods to evaluate")
    return methods


@dataclass
class EvalPlan:
    """What to evaluate: the base model, methods, k values and the artifacts the trained methods need."""

    model: str
    methods: list[Method]
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 25, 50])
    plus_ks: list[int] | None = None  # k values for spring+ (default: ks)
    tokens: str | None = None
    lora: str | None = None
    prefix: str | None = None
    spring_plus: str | None = None
    max_new_tokens: int = 16
    batch_size: int = 16
    decodings: list[str] = field(default_factory=lambda: ["stuff"])
    knowledge: list[str] = field(default_factory=lambda: ["icl"])
    adapters: str | None = None  # PRAG store, Poly-PRAG experts or DyPRAG translator, for knowledge prag/combine
    missing_adapter: str = "error"

    def __post_init__(self) -> None:
        unknown = [decoding for decoding in self.decodings if decoding not in DECODINGS]
        if unknown or not self.decodings:
            raise EvalError(f"unknown decoding(s) {unknown}; choose from {', '.join(DECODINGS)}")
        unknown = [mode for mode in self.knowledge if mode not in KNOWLEDGE]
        if unknown or not self.knowledge:
            raise EvalError(f"unknown knowledge mode(s) {unknown}; choose from {', '.join(KNOWLEDGE)}")
        if self.missing_adapter not in MISSING_ADAPTER:
            raise EvalError(f"unknown --missing-adapter rule {self.missing_adapter!r}; choose from "
                            f"{', '.join(MISSING_ADAPTER)}")
        parametric = [mode for mode in self.knowledge if mode != "icl"]
        if parametric and not self.adapters:
            raise EvalError(f"--knowledge {parametric[0]} needs --adapters FOLDER (a PRAG store or Poly-PRAG experts "
                            "from `spring-rag parametrize`, or a DyPRAG translator)")
        if self.adapters and not parametric:
            raise EvalError("--adapters is read only by --knowledge prag or combine; add them (e.g. --knowledge "
                            "icl,prag,combine) or drop --adapters")
        if parametric and not any(method.parametric for method in self.methods):
            raise EvalError(f"--knowledge {parametric[0]} applies to the methods concat and spring (the SPRING layout "
                            "on the base model); add one of them to --methods")
        for method in self.methods:
            option = TRAINED.get(method.key)
            if option and not getattr(self, option):
                flag = "--" + option.replace("_", "-")
                raise EvalError(f"method {method.key!r} needs its artifact: pass {flag} FOLDER")
        if any(k < 1 for k in self.ks + (self.plus_ks or [])):
            raise EvalError(f"every k must be at least 1, got {self.ks} {self.plus_ks or ''}")


def dataset_name(path: str | Path) -> str:
    """``.../squad/dev.jsonl`` -> ``squad/dev``: the folder names the dataset, the file its split."""
    path = Path(path)
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def load_datasets(files: Sequence[str], *, limit: int | None, passages: int, corpus: str | None = None,
                  store: str | None = None, retriever: str = "bm25", cache_dir: Path,
                  own_passages: Sequence[str] = ()) -> dict[str, list[dict]]:
    """The first ``limit`` rows of each file with ``passages`` passages: retrieved when a corpus or store is given,
    else the rows' own (gold) passages, cut to ``passages``.

    Files in ``own_passages`` keep all of their rows' own passages even when the others are retrieved (e.g.
    HotpotQA's gold paragraphs with their distractors next to SQuAD questions answered from a corpus).
    """
    from spring_train.data import attach_retrieved, load_sources, open_retriever

    keep = {Path(path).resolve() for path in own_passages}
    unknown = keep - {Path(path).resolve() for path in files}
    if unknown:
        raise EvalError(f"--own-passages names files that are not --data files: {sorted(map(str, unknown))}")
    sources = load_sources(files)
    for source in sources:
        source.rows = source.rows[:limit] if limit else source.rows
    retrieved = [source for source in sources if Path(source.path).resolve() not in keep]
    found = open_retriever(corpus=corpus, store=store, backend=retriever, cache_dir=cache_dir)
    if found is not None:
        attach_retrieved(retrieved, found, passages)
    for source in retrieved:
        for row in source.rows:
            row["passages"] = list(row.get("passages") or [])[:passages]
            for key in ("passage_scores", "passage_ids"):
                if key in row:
                    row[key] = row[key][:passages]
    return {dataset_name(source.path): source.rows for source in sources}


def documents_for(row: dict[str, Any], *, by_text: bool = False) -> list[ParametricDocument]:
    """``row``'s passages as documents with adapter ids: the corpus id of a retrieved passage, else the ``"id"`` of a
    row's own passage, else (``by_text``, for adapters made from the text: DyPRAG) a hash of the passage's text."""
    passages = list(row.get("passages") or [])
    ids = list(row.get("passage_ids") or [None] * len(passages))
    scores = list(row.get("passage_scores") or [None] * len(passages))
    documents = []
    for passage, doc_id, score_ in zip(passages, ids, scores, strict=True):
        if doc_id is None and isinstance(passage, Mapping) and isinstance(passage.get("id"), str):
            doc_id = passage["id"]
        if doc_id is None and by_text:
            doc_id = "text-" + _digest(passage)
        documents.append(ParametricDocument(doc_id, passage, score_))
    return documents


def _passages(method: Method, row: dict[str, Any]) -> list[Any]:
    """The passages ``method`` shows the model for ``row`` (none for the closed-book settings)."""
    return [] if method.closed_book or method.key == "closed-book" else list(row.get("passages") or [])


def prompt_for(method: Method, sm: SpringModel, row: dict[str, Any], k: int | None) -> PromptParts | dict[str, Any]:
    """The prompt (``PromptParts``, or a ``generate_batch`` item for SPRING methods) a method gives the model for
    ``row``. Questions and passages are text only: marker-like strings in them stay characters."""
    passages = _passages(method, row)
    question = row["question"]
    if method.key in ("spring", "spring+"):
        return {"question": question, "passages": passages, "k": k}
    head = format_passages(passages) + "\n\n" if passages else ""
    if method.key == "prompt":
        return PromptParts(f"{head}{DEFAULT_INSTRUCTION}\nQuestion: {question}\nAnswer:")
    if method.key == "prompt-chat":
        user = f"{head}{DEFAULT_INSTRUCTION}\nQuestion: {question}"
        return render_chat(sm.tokenizer, [{"role": "user", "content": user}])
    return build_prompt(question, passages, 0, layout="raw")


def evaluate(plan: EvalPlan, datasets: dict[str, list[dict[str, Any]]], out: str | Path, *,
             load: Callable[[str | None], SpringModel] | None = None,
             progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every method (and k) on every dataset; returns one result row per (dataset, method, k).

    ``load(artifact)`` returns a SpringModel for an artifact folder (``None``: the base model); by default
    ``spring_train.adapters.load_trained`` on a fresh copy of ``plan.model``.
    """
    from spring_train.adapters import load_trained

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = _PredictionStore(out / PREDICTIONS)
    load = load or (lambda artifact: load_trained(plan.model, artifact))
    results = []
    for method, artifact in _grouped(plan):
        sm = load(artifact)
        setup = _setup_digest(plan, artifact)
        knowledge = plan.knowledge if method.parametric else ["icl"]  # the other methods read passages their way
        parametric = _Parametric(plan, sm, datasets) if any(mode != "icl" for mode in knowledge) else None
        ks = {"spring": plan.ks, "spring+": plan.plus_ks or plan.ks}.get(method.key, [None])
        for k in ks:
            if k is not None:
                sm.check_k(k)
            for decoding in plan.decodings:
                if decoding != "stuff" and not method.marginal:
                    continue  # marginal decoding reads passages one by one in the SPRING layout
                for mode in knowledge:
                    if mode == "prag" and decoding != "stuff":
                        continue  # the prompt holds no passage to read one by one
                    for name, rows in datasets.items():
                        results.append(_run_one(plan, sm, method, k, decoding, name, rows, store, progress, setup,
                                                mode, parametric))
    return results


class _Parametric:
    """The adapters for one loaded model, opened once, and what identifies them in the prediction digests.

    A store's documents are checked before any answer with them: a passage it has no adapter for is refused
    (naming some) unless ``missing_adapter="icl"`` reads it as text."""

    def __init__(self, plan: EvalPlan, sm: SpringModel, datasets: dict[str, list[dict[str, Any]]]):
        from spring_core.parametric import open_adapters

        assert plan.adapters is not None  # EvalPlan checked it
        self.adapters = open_adapters(plan.adapters, sm.model, model_name=plan.model)
        self.by_text = hasattr(self.adapters, "prepare")  # adapters made from the text at query time (DyPRAG)
        self.identity = _adapters_identity(plan.adapters)
        rows = [row for dataset in datasets.values() for row in dataset]
        unknown = [doc_id for row in rows for doc_id in self.without_adapter(row)]
        if unknown and plan.missing_adapter == "error":
            total = sum(len(row.get("passages") or []) for row in rows)
            named = sorted({str(doc_id) for doc_id in unknown if doc_id is not None})
            without_id = sum(doc_id is None for doc_id in unknown)
            found = (f"{len(named)} document(s) not in {plan.adapters} (e.g. {', '.join(named[:3])})" if named
                     else "")
            if without_id:
                found += ("; " if found else "") + (f"{without_id} passage(s) without an id (retrieve them with "
                                                    "--corpus/--store, or give the rows' passages an \"id\")")
            raise EvalError(f"{len(unknown)} of the {total} passages have no adapter: {found}. Encode them with "
                            "`spring-rag parametrize`, or pass --missing-adapter icl to read their text in the "
                            "prompt instead")
        if unknown:  # said once here; the engine's per-question warnings would repeat it for every question
            logger.warning("%d passage(s) have no adapter in %s: their text goes into the prompt instead "
                           "(--missing-adapter icl)", len(unknown), plan.adapters)

    def documents(self, row: dict[str, Any]) -> list[ParametricDocument]:
        return documents_for(row, by_text=self.by_text)

    def without_adapter(self, row: dict[str, Any]) -> list[str | None]:
        """The ids of ``row``'s passages that have no adapter (``None``: a passage without an id); a translator
        has one for every passage."""
        if self.by_text:
            return []
        return [d.adapter_id for d in self.documents(row) if d.adapter_id is None or d.adapter_id not in self.adapters]


def _adapters_identity(folder: str) -> Any:
    """What the adapters' answers depend on: their manifest where it lists every file's SHA-256 (a PRAG store, whose
    shards are then not read again), else the files' SHA-256 (``_artifact_files``)."""
    path = Path(folder) / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    files = manifest.get("files")
    if isinstance(files, dict) and files and all(isinstance(v, dict) and v.get("sha256") for v in files.values()):
        return {key: value for key, value in manifest.items() if key not in ("metrics", "created")}
    return _artifact_files(folder)


def _grouped(plan: EvalPlan) -> Iterator[tuple[Method, str | None]]:
    """Methods with the artifact each loads (base-model methods first, so one load serves them)."""
    for method in sorted(plan.methods, key=lambda m: m.key in TRAINED):
        option = TRAINED.get(method.key)
        yield method, getattr(plan, option) if option else None


def _setup_digest(plan: EvalPlan, artifact: str | None) -> str:
    """What every prediction of one loaded model shares: the base model, the artifact's files, the length."""
    return _digest({"model": plan.model, "max_new_tokens": plan.max_new_tokens,
                    "artifact": _artifact_files(artifact)})


def _artifact_files(artifact: str | None) -> Any:
    """An artifact folder's weights and settings as ``{relative path: SHA-256 or manifest}``, or the name as given
    when it is not a folder. Manifests count without their recorded metrics and creation time, which
    ``--record-metrics`` and re-saving change without changing a prediction."""
    if artifact is None:
        return None
    folder = resolve_artifact(artifact)
    if not folder.is_dir():
        return str(artifact)
    files = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.name == MANIFEST_NAME:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            files[name] = {key: value for key, value in manifest.items() if key not in ("metrics", "created")}
        elif path.is_file() and path.suffix in (".safetensors", ".json"):
            files[name] = sha256_file(path)
    return files


def _input_digest(setup: str, row: dict[str, Any], passages: Sequence[Any]) -> str:
    return _digest({"setup": setup, "question": row["question"], "passages": list(passages),
                    "scores": row.get("passage_scores")})


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_one(plan: EvalPlan, sm: SpringModel, method: Method, k: int | None, decoding: str, dataset: str,
             rows: list[dict[str, Any]], store: _PredictionStore, progress: Callable[[str], None],
             setup: str, knowledge: str = "icl", parametric: _Parametric | None = None) -> dict[str, Any]:
    tags = [mode for mode in (knowledge,) if mode != "icl"] + [mode for mode in (decoding,) if mode != "stuff"]
    label = f"{method.label} [{', '.join(tags)}]" if tags else method.label
    key = (dataset, label, k)
    inputs = {str(row["id"]): _input_digest(setup, row, _passages(method, row)) for row in rows}
    if knowledge != "icl":
        assert parametric is not None
        inputs = {str(row["id"]): _digest({"input": inputs[str(row["id"])], "knowledge": knowledge,
                                           "adapters": parametric.identity, "missing_adapter": plan.missing_adapter,
                                           "ids": [d.adapter_id for d in parametric.documents(row)]})
                  for row in rows}
    todo = [row for row in rows if (*key, str(row["id"]), inputs[str(row["id"])]) not in store.done]
    if knowledge != "icl":
        _generate_parametric(plan, sm, method, k, decoding, knowledge, parametric, key, todo, store, inputs)
    elif decoding == "stuff":
        _generate_batched(plan, sm, method, k, key, todo, store, inputs)
    else:
        for row in todo:
            began = time.perf_counter()
            out = sm.generate(row["question"], _passages(method, row), k or 0, decoding=decoding,
                              scores=row.get("passage_scores"), max_new_tokens=plan.max_new_tokens)
            store.add([_prediction(key, row, out.text, time.perf_counter() - began, inputs)])
    predictions = [store.done[(*key, str(row["id"]), inputs[str(row["id"])])] for row in rows]
    result = {"dataset": dataset, "method": label, "k": k, "decoding": decoding, "knowledge": knowledge,
              "adapters": Path(plan.adapters).name if knowledge != "icl" and plan.adapters else None,
              "retrieval": not method.closed_book and method.key != "closed-book"}
    if parametric is not None and knowledge != "icl":  # passages read as text for want of an adapter
        result["without_adapter"] = sum(len(parametric.without_adapter(row)) for row in rows)
    result.update(aggregate([p["scores"] for p in predictions]))
    lines = aggregate([p["scores_line"] for p in predictions])
    result.update({f"{m}_line": v for m, v in lines.items() if m != "count"})
    result["seconds_per_question"] = round(sum(p["seconds"] for p in predictions) / len(predictions), 4)
    progress(f"{dataset:<28} {label + (f' k={k}' if k else ''):<28} EM {result['em']:5.1f}  "
             f"F1 {result['f1']:5.1f}  Acc {result['acc']:5.1f}  (first line: EM {result['em_line']:5.1f})")
    return result


def _generate_batched(plan: EvalPlan, sm: SpringModel, method: Method, k: int | None,
                      key: tuple[str, str, int | None], todo: list[dict[str, Any]], store: _PredictionStore,
                      inputs: dict[str, str]) -> None:
    prompts = [prompt_for(method, sm, row, k) for row in todo]
    # Similar prompt lengths share a batch (less padding); results do not depend on the order.
    order = sorted(range(len(todo)), key=lambda i: _length(prompts[i]))
    for start in range(0, len(order), plan.batch_size):
        chosen = order[start:start + plan.batch_size]
        began = time.perf_counter()
        outputs = sm.generate_batch([prompts[i] for i in chosen], batch_size=plan.batch_size,
                                    max_new_tokens=plan.max_new_tokens)
        seconds = (time.perf_counter() - began) / len(chosen)
        store.add([_prediction(key, todo[i], out.text, seconds, inputs)
                   for i, out in zip(chosen, outputs, strict=True)])


def _generate_parametric(plan: EvalPlan, sm: SpringModel, method: Method, k: int | None, decoding: str,
                         knowledge: str, parametric: _Parametric | None, key: tuple[str, str, int | None],
                         todo: list[dict[str, Any]], store: _PredictionStore, inputs: dict[str, str]) -> None:
    """One question at a time through the engine (each question activates its own documents' adapters)."""
    from spring_core.engine import Engine, Request

    assert parametric is not None
    engine = Engine(sm, parametric.adapters)
    with _without_missing_adapter_warnings():
        for row in todo:
            request = Request(question=row["question"], documents=parametric.documents(row), k=k or 0,
                              decoding=decoding, knowledge=knowledge, missing_adapter=plan.missing_adapter,
                              settings={"max_new_tokens": plan.max_new_tokens})
            began = time.perf_counter()
            out = engine.generate(request)
            store.add([_prediction(key, row, out.text, time.perf_counter() - began, inputs)])


@contextmanager
def _without_missing_adapter_warnings() -> Iterator[None]:
    """Drop the engine's per-question "no adapter" warnings (``_Parametric`` said it once for the whole run)."""
    def keep(record: logging.LogRecord) -> bool:
        return record.msg != MISSING_ADAPTER_WARNING

    online_logger.addFilter(keep)
    try:
        yield
    finally:
        online_logger.removeFilter(keep)


def _length(prompt: PromptParts | dict[str, Any]) -> int:
    return len(prompt.render()) if isinstance(prompt, PromptParts) else len(json.dumps(prompt))


def _prediction(key: tuple[str, str, int | None], row: dict[str, Any], text: str, seconds: float,
                inputs: dict[str, str]) -> dict[str, Any]:
    return {"dataset": key[0], "method": key[1], "k": key[2], "id": str(row["id"]),
            "input": inputs[str(row["id"])], "prediction": text,
            "answers": row["answers"], "scores": score(text, row["answers"]),
            "scores_line": score(first_line(text), row["answers"]), "seconds": round(seconds, 4)}


def _key(prediction: dict[str, Any]) -> tuple[str, str, int | None, str, str | None]:
    return prediction["dataset"], prediction["method"], prediction["k"], prediction["id"], prediction.get("input")


class _PredictionStore:
    """``predictions.jsonl``: one line per (dataset, method, k, row id, input digest); read back to resume."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[tuple[str, str, int | None, str, str | None], dict[str, Any]] = {}
        if path.exists():
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # a run killed mid-write: that last prediction is recomputed
                text = text[: text.rfind("\n") + 1]
                path.write_text(text, encoding="utf-8")
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    self.done[_key(item)] = item
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DataError(f"{path}:{number}: not a prediction line ({exc}); delete the line or the file "
                                    "to recompute it") from exc

    def add(self, items: Sequence[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for item in items:
                handle.write(json.dumps(item) + "\n")
                self.done[_key(item)] = item


def write_report(results: list[dict[str, Any]], out: str | Path, *, config: dict[str, Any]) -> dict[str, Path]:
    """``results.json``, ``results.md`` and (when some method has several k) ``em_f1_vs_k.png`` in ``out``.

    Every file is rendered first and then written atomically: a rerun that fails to write (a full disk) leaves each
    report of the run before whole, never cut."""
    from spring_train.report import markdown_tables, render_vs_k

    out = Path(out)
    contents = {"json": (out / "results.json",
                         (json.dumps({"config": config, "results": results}, indent=2) + "\n").encode("utf-8")),
                "markdown": (out / "results.md", (markdown_tables(results) + "\n").encode("utf-8"))}
    ks_per_method: dict[str, set[int]] = {}
    for r in results:
        if r["k"] is not None:
            ks_per_method.setdefault(r["method"], set()).add(r["k"])
    if any(len(ks) > 1 for ks in ks_per_method.values()):
        contents["plot"] = (out / "em_f1_vs_k.png", render_vs_k(results))
    for path, data in contents.values():
        atomic_write_bytes(path, data)
    return {name: path for name, (path, _) in contents.items()}


def record_metrics(artifact: str | Path, results: list[dict[str, Any]], *, method: str = "SPRING",
                   config: dict[str, Any] | None = None) -> Path:
    """Write ``method``'s result rows (per dataset and k) into a virtual-tokens artifact's ``metrics``."""
    from spring_core.model.tokens import VirtualTokens, resolve_artifact

    artifact = resolve_artifact(artifact)
    tokens = VirtualTokens.load(artifact)
    rows = [r for r in results if r["method"] == method]
    if not rows:
        raise EvalError(f"no {method} results to record; evaluate the 'spring' method with --tokens {artifact}")
    metrics = {f"{r['dataset']} k={r['k']}": {m: r[m] for m in ("em", "f1", "acc", "em_line", "count")}
               for r in rows}
    return tokens.save(artifact, metrics={"eval": metrics, "settings": config or {}})

