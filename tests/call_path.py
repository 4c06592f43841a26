"""How many distinct project functions one warm RAG call enters (issue #32).

``count_project_functions(call)`` runs ``call()`` under ``sys.setprofile`` (and ``threading.setprofile``, so the
worker threads the call starts are seen too: LangChain runs the branches of ``{"context": ..., "question": ...}``
in a thread pool) and returns every project function it entered, as ``(co_filename, co_firstlineno, co_name)``.

* Project functions: code objects whose file lies under the folders of the imported ``spring_core``, the
  integrations (``langchain_spring``, ``llama_index.llms.spring``) and ``training`` (``spring_train``), found from
  the packages' own ``__file__``, so an installed copy is counted where it really runs from.
* Comprehensions (``<listcomp>``, ``<dictcomp>``, ``<setcomp>``, ``<genexpr>``) are not counted; ``<lambda>`` is.
* Distinct: a function entered many times (a generator resumed, a helper called per token) counts once.
* Model loading is not counted: the builders load the model, and the caller profiles a warm call (one identical
  call first, then the profiled one; ``measure`` does both).

``llama_index_call`` and ``lcel_call`` build the two calls of the issue on a ``(model, tokenizer)`` pair (the tiny
random Llama of ``conftest.py``). Run this file (``.venv/bin/python tests/call_path.py [OUT_DIR]``) to print both
lists without pytest, and to write them to ``OUT_DIR/call_path_llama.txt`` and ``OUT_DIR/call_path_lcel.txt``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Function = tuple[str, int, str]
"""``(co_filename, co_firstlineno, co_name)`` of one entered function."""

NOT_COUNTED = frozenset({"<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"})
"""Code object names that are comprehensions, not functions."""

QUESTION = "Who wrote Hamlet?"
PASSAGES = [
    {"id": "h1", "title": "Hamlet", "text": "Hamlet is a play by William Shakespeare."},
    {"id": "p1", "title": "Paris", "text": "Paris is the capital of France."},
]
CONTEXT = "[1] (Title: Hamlet) Hamlet is a play by William Shakespeare."


def project_roots() -> tuple[Path, ...]:
    """The project's source folders, found from the imported packages: ``spring_core``, ``integrations``,
    ``training``."""

    def folder(module: str, up: int) -> Path:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ImportError(f"cannot find {module}: is the project installed in this environment?")
        return Path(os.path.realpath(spec.origin)).parents[up]

    roots = {
        folder("spring_core", 0),  # .../spring_core/__init__.py -> spring_core
        folder("langchain_spring", 1),  # .../integrations/langchain_spring/__init__.py -> integrations
        folder("llama_index.llms.spring", 3),  # .../integrations/llama_index/llms/spring/__init__.py -> integrations
        folder("spring_train", 1),  # .../training/spring_train/__init__.py -> training
    }
    return tuple(sorted(roots))


def count_project_functions(call: Callable[[], Any], *, all_threads: bool = True) -> set[Function]:
    """The distinct project functions ``call()`` enters (see the module docstring); ``all_threads=False`` sees the
    calling thread only (``sys.setprofile`` alone)."""
    roots = [str(root) for root in project_roots()]
    inside: dict[str, bool] = {}
    entered: set[Function] = set()

    def is_project_file(filename: str) -> bool:
        hit = inside.get(filename)
        if hit is None:
            path = os.path.realpath(filename)
            hit = inside[filename] = any(path.startswith(root + os.sep) for root in roots)
        return hit

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            if code.co_name not in NOT_COUNTED and is_project_file(code.co_filename):
                entered.add((code.co_filename, code.co_firstlineno, code.co_name))

    previous, previous_threads = sys.getprofile(), threading.getprofile()
    if all_threads:
        threading.setprofile(profile)  # threads started from now on (the call's worker threads)
    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(previous)
        threading.setprofile(previous_threads)
    return set(entered)  # a copy: a worker thread the call left running cannot change the answer


def measure(call: Callable[[], Any], *, all_threads: bool = True) -> set[Function]:
    """One warm-up ``call()`` (loading, caches, first-use paths), then the profiled, identical one."""
    call()
    return count_project_functions(call, all_threads=all_threads)


def relative(filename: str) -> str:
    """A project file as a path from the repository (the folder that holds the project's source folders)."""
    path = Path(os.path.realpath(filename))
    for root in project_roots():
        if path.is_relative_to(root):
            return str(path.relative_to(root.parent))
    return filename


def listing(functions: Iterable[Function]) -> list[tuple[str, str]]:
    """Sorted ``(relative file, qualified-ish name)`` pairs; the line number tells same-named functions apart."""
    return sorted((relative(f), f"{name}:{line}") for f, line, name in functions)


def per_file(functions: Iterable[Function]) -> Counter[str]:
    """How many of the functions each project file holds."""
    return Counter(relative(f) for f, _, _ in functions)


def report(title: str, functions: set[Function]) -> str:
    """A readable account: the count, the functions per file, then every function."""
    lines = [f"{title}: {len(functions)} distinct project functions"]
    lines += [f"  {count:3d}  {name}" for name, count in sorted(per_file(functions).items(),
                                                                  key=lambda item: (-item[1], item[0]))]
    lines += [f"    {file}  {name}" for file, name in listing(functions)]
    return "\n".join(lines)


def write_listing(path: Path | str, functions: set[Function]) -> None:
    """``relative file<TAB>name:line`` per line, sorted."""
    Path(path).write_text("".join(f"{file}\t{name}\n" for file, name in listing(functions)))


# ----- the two calls of the issue ----------------------------------------------------------------------------


def spring_model(tiny: tuple[Any, Any], n: int = 8, seed: int = 3) -> Any:
    """A ``SpringModel`` over the tiny model with ``n`` random virtual tokens."""
    from spring_core import SpringModel, VirtualTokens

    model, tokenizer = tiny
    return SpringModel(model, tokenizer, VirtualTokens.random(model, n=n, seed=seed))


def llama_index_call(tiny: tuple[Any, Any], *, max_new_tokens: int = 2) -> Callable[[], str]:
    """``SpringLLM.predict`` as a LlamaIndex query engine calls it (compact/refine synthesizer, default templates):
    the default text-QA selector template with the question filled in, and the retrieved context as
    ``context_str``."""
    from llama_index.core.prompts.default_prompt_selectors import DEFAULT_TEXT_QA_PROMPT_SEL
    from llama_index.llms.spring import SpringLLM

    llm = SpringLLM(spring_model=spring_model(tiny), max_new_tokens=max_new_tokens)
    template = DEFAULT_TEXT_QA_PROMPT_SEL.partial_format(query_str=QUESTION)  # what Refine._give_response_single does
    return functools.partial(llm.predict, template, context_str=CONTEXT)


def lcel_call(tiny: tuple[Any, Any], store_folder: Path | str, *, max_tokens: int = 2) -> Callable[[], Any]:
    """``({"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | ChatSpring).invoke``
    over a BM25 store of two passages in ``store_folder`` (created here), so the retrieval is tracked and the block
    is placed automatically."""
    from langchain_core.runnables import RunnablePassthrough

    from langchain_spring import SPRING_RAG_CHAT_PROMPT, ChatSpring, SpringRetriever, format_docs
    from spring_core.retrieval import create_store

    create_store(Path(store_folder), "bm25").add(PASSAGES)
    retriever = SpringRetriever(store=str(store_folder), k=1)
    chat = ChatSpring(spring_model=spring_model(tiny), max_tokens=max_tokens)
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | SPRING_RAG_CHAT_PROMPT | chat

    def call() -> Any:
        answer = chain.invoke(QUESTION)
        virtual = answer.usage_metadata["input_token_details"]["virtual"]
        assert virtual == 8, f"the block was not placed automatically ({virtual} virtual tokens)"
        return answer

    return call


def main(argv: list[str]) -> None:
    """Build the tiny model in a temporary folder, measure both calls, print them, write the listings."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_tiny_model, make_tiny_tokenizer

    from spring_core.model.loading import load_model

    out = Path(argv[0]) if argv else None
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        make_tiny_model(folder / "tiny", make_tiny_tokenizer(folder / "tiny"))
        tiny = load_model(str(folder / "tiny"))
        calls = {"llama": llama_index_call(tiny), "lcel": lcel_call(tiny, folder / "store")}
        for name, call in calls.items():
            functions = measure(call)
            main_thread = count_project_functions(call, all_threads=False)
            print(report(f"{name} (all threads; calling thread only: {len(main_thread)})", functions), "\n")
            if out is not None:
                write_listing(out / f"call_path_{name}.txt", functions)


if __name__ == "__main__":
    main(sys.argv[1:])
