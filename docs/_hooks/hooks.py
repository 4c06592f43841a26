"""MkDocs hooks for the spring-rag docs (``hooks:`` in mkdocs.yml).

- ``on_files``: the results pages, generated at build time from ``benchmarks/results/*.json`` (and the
  ``results.json`` of each folder there): a page per file with its tables, plus the plots found beside it.
  Nothing is typed by hand, so a rerun benchmark shows up in the next build.
- ``on_page_markdown``: ``<!-- README:NAME -->`` in a page is replaced by the block between
  ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` of the README (the model-family table, which
  ``scripts/compat_table.py`` rewrites there), so the docs never hold a stale copy.
- ``on_config``: autorefs' legacy references off, so ``[r1][r2]`` in a docstring is text, not a broken link.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"

# What each result file measures and the guide page that reads it (files not listed get a generic title).
DESCRIPTIONS = {
    "quality": ("Quality: EM / F1 by method and k", "the bundled artifact", "../bundled-artifact.md"),
    "dropin": ("Drop-in: LlamaIndex engines and LangChain chains", "drop-in quality", "../dropin.md"),
    "decoding": ("Decodings: stuff, RAG-Token, RAG-Sequence", "decodings", "../decoding.md"),
    "decoding-quiet": ("Decodings: speed on a quiet machine", "decodings", "../decoding.md"),
    "overhead": ("Overhead of the block", "benchmarks", "../benchmarks.md"),
    "overhead-healing": ("Overhead of token healing", "concepts: token healing", "../concepts.md#token-healing"),
    "parametric": ("Parametric RAG: PRAG, Poly-PRAG, combine", "parametric RAG", "../parametric.md"),
    "retrieval": ("Retrieval stores: recall and speed", "retrieval stores", "../retrieval.md"),
    "serving": ("Serving: vLLM against in process", "serve on vLLM", "../serving.md"),
    "train_speed": ("Training speed: SPRING against peft prompt tuning", "training", "../training.md"),
}
MAX_LIST = 6  # longer lists of numbers (raw timings) are summarised
MAX_TEXT = 120  # longer texts (prompts, answers) are cut


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            shown = ", ".join(_cell(v) for v in value[:MAX_LIST])
            return shown + (f", … ({len(value)} values)" if len(value) > MAX_LIST else "")
        return f"({len(value)} entries)"
    if isinstance(value, dict):
        return f"({len(value)} fields)"
    text = str(value)
    text = text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
    return text.replace("|", "\\|").replace("\n", "\\n")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _records_table(records: list[dict], first: str | None = None) -> str:
    """One row per record; columns are the keys whose values are not nested lists of records."""
    records = [_flatten(r) for r in records]
    columns: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in columns and not (isinstance(value, list) and value and isinstance(value[0], dict)):
                columns.append(key)
    columns = [c for c in columns if c != "__name__"]
    named = first is not None
    header = ([first] if named else []) + columns
    return _table(header, [([r.get("__name__")] if named else []) + [r.get(c) for c in columns] for r in records])


def _flatten(record: dict) -> dict:
    """Sub-dicts of plain values become ``key.sub`` columns (one level)."""
    flat: dict = {}
    for key, value in record.items():
        if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
            flat.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            flat[key] = value
    return flat


def _section(name: str, value, level: int = 2) -> str:
    heading = "#" * level + f" {name}\n\n"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return heading + _records_table(value) + "\n"
    if isinstance(value, dict):
        if value and all(isinstance(v, dict) for v in value.values()):
            records = [{"__name__": key, **sub} for key, sub in value.items()]
            return heading + _records_table(records, first="") + "\n"
        scalars = [[k, v] for k, v in value.items() if not isinstance(v, dict)]
        nested = {k: v for k, v in value.items() if isinstance(v, dict)}
        out = heading + (_table(["field", "value"], scalars) + "\n" if scalars else "")
        for key, sub in nested.items():
            out += _section(f"{name}: {key}", sub, min(level + 1, 4))
        return out
    return heading + _cell(value) + "\n\n"


def _result_page(name: str, path: Path, plots: list[str]) -> str:
    data = json.loads(path.read_text(encoding="utf-8"))
    title, guide, link = DESCRIPTIONS.get(name, (name.replace("_", " ").replace("-", " ").capitalize(), None, None))
    out = f"# {title}\n\n"
    out += f"Generated when the docs were built from `{path.relative_to(ROOT).as_posix()}`"
    out += f"; what it means is in [{guide}]({link}).\n\n" if guide else ".\n\n"
    for plot in plots:
        out += f"![{Path(plot).stem}]({name}/{Path(plot).name})\n\n"
    if not isinstance(data, dict):
        return out + _section("results", data)
    scalars = [[k, v] for k, v in data.items() if not isinstance(v, (dict, list))]
    if scalars:
        out += _table(["field", "value"], scalars) + "\n"
    for key, value in data.items():
        if isinstance(value, (dict, list)):
            out += _section(key, value)
    return out


def result_sources() -> list[tuple[str, Path, list[Path]]]:
    """``(name, json file, plot files)`` for every result file, sorted by name."""
    found = []
    for path in sorted(RESULTS.glob("*.json")):
        found.append((path.stem, path, []))
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        if (folder / "results.json").is_file():
            found.append((folder.name, folder / "results.json", sorted(folder.glob("*.png"))))
    return sorted(found)


def on_config(config, **kwargs):
    autorefs = config.plugins.get("autorefs")
    if autorefs is not None and hasattr(autorefs, "legacy_refs"):
        autorefs.legacy_refs = False
    return config


def on_files(files: Files, config, **kwargs) -> Files:
    index = ["# Results\n",
             "Every page here is generated when the docs are built, from the JSON files the benchmark scripts write "
             "to `benchmarks/results/` (see [Benchmarks](../benchmarks.md) for how to rerun them). The guides "
             "read these numbers: [the bundled artifact](../bundled-artifact.md), "
             "[drop-in quality](../dropin.md), [decodings](../decoding.md), [serving](../serving.md).\n",
             "| page | source |", "|---|---|"]
    for name, path, plots in result_sources():
        page = _result_page(name, path, [p.as_posix() for p in plots])
        files.append(File.generated(config, f"results/{name}.md", content=page))
        for plot in plots:
            files.append(File.generated(config, f"results/{name}/{plot.name}", abs_src_path=str(plot)))
        title = DESCRIPTIONS.get(name, (name,))[0]
        index.append(f"| [{title}]({name}.md) | `{path.relative_to(ROOT).as_posix()}` |")
    files.append(File.generated(config, "results/index.md", content="\n".join(index) + "\n"))
    return files


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    def readme_block(match: re.Match) -> str:
        name = match.group(1)
        text = README.read_text(encoding="utf-8")
        found = re.search(rf"<!-- {re.escape(name)}:start -->\n(.*?)<!-- {re.escape(name)}:end -->", text, re.S)
        if found is None:
            raise ValueError(f"{page.file.src_path}: README.md has no '{name}' block")
        return found.group(1)

    return re.sub(r"<!-- README:([\w-]+) -->", readme_block, markdown)
