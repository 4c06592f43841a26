"""The project's import graph, read from the source (AST): no cycles, and dependencies point one way.

Every ``import`` counts, inside functions too (a lazy import that closes a cycle is still a cycle), except those
under ``if TYPE_CHECKING:``. ``from package import name`` is an import of ``package.name`` when that is a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"spring_core": ROOT / "spring_core", "spring_cli": ROOT / "spring_cli",
            "spring_train": ROOT / "training" / "spring_train",
            "langchain_spring": ROOT / "integrations" / "langchain_spring",
            "llama_index": ROOT / "integrations" / "llama_index"}
LOWER_LAYERS = ("spring_core.types", "spring_core.options", "spring_core.errors", "spring_core.prompts",
                "spring_core.model.healing", "spring_core.model.inputs", "spring_core.model.tokens",
                "spring_core.model.loading", "spring_core.artifacts.manifest", "spring_core.generation")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
               and "TYPE_CHECKING" in ast.unparse(stmt.test) for node in ast.walk(stmt)}
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {target for target in out if target in known and target != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, name, set(found)) for name, path in found.items()}


def test_the_graph_is_read_from_real_imports():
    edges = graph()
    assert "spring_core.generation.runner" in edges["spring_core.generation.marginal"]
    assert "spring_core.options" in edges["spring_core.model.spring_model"]
    assert len(edges) > 60


def test_there_is_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_dependencies_point_one_way():
    edges = graph()
    for name, targets in edges.items():
        if name.startswith("spring_core"):
            outside = {t for t in targets if not t.startswith("spring_core")}
            assert not outside, f"the runtime {name} imports {sorted(outside)}"
        if name.startswith("spring_train"):
            upward = {t for t in targets if not t.startswith(("spring_core", "spring_train"))}
            assert not upward, f"the trainer {name} imports {sorted(upward)}"
        if name.startswith(("langchain_spring", "llama_index")):
            assert not {t for t in targets if t.startswith(("spring_train", "spring_cli"))}, name
        if name.startswith("spring_cli.runtime"):  # the runtime commands work without the trainer installed
            assert not {t for t in targets if t.startswith("spring_train")}, name
        if name.startswith(LOWER_LAYERS):
            upper = {t for t in targets if t in ("spring_core", "spring_core.model.spring_model", "spring_core.engine")}
            assert not upper, f"the lower layer {name} imports {sorted(upper)}"
