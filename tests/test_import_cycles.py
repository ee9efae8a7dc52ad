"""No import cycles among claykiln's modules (TYPE_CHECKING imports count too).

A cycle hides which module depends on which (and breaks as soon as a name is used at import
time); the layering daemon -> actors -> storage is drawn with one-way arrows only.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "actors", "storage")
# Cycles known when this test was written, to be removed (not added to): the client's resend
# helper and its core name each other's types under TYPE_CHECKING only.
KNOWN_CYCLES = [
    [
        "claykiln.daemon.client._core",
        "claykiln.daemon.client._methods",
        "claykiln.daemon.client._resend",
    ],
]


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(("claykiln", *parts))] = path
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the claykiln modules its import statements name (a package's own submodules
    imported by its ``__init__`` included)."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                found = resolve(name)
                if found is not None and found != mod:
                    targets.add(found)
        graph[mod] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The checker itself reports a two-module cycle (guards against a finder that finds none)."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_module_imports_one_that_imports_it_back() -> None:
    """daemon/, actors/ and storage/ have no import cycle, direct or through other modules."""
    mods = module_files()
    assert len(mods) > 50, "the module scan found too few modules"
    assert [c for c in cycles(import_graph(mods)) if c not in KNOWN_CYCLES] == []
