"""The package's layering: no import cycles, and no stage importing a later one.

``src/gradhealth`` is laid out as the data flow (docs/architecture.md). Every import of a
gradhealth module is read from the source, at module level or inside a function (a lazy
import is still a dependency), and checked against ``STAGES``: a module may import its
own stage and the stages before it, never a later one, and the graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gradhealth

PACKAGE = Path(gradhealth.__file__).parent

# Stages in data-flow order; a module belongs to the first prefix that matches it.
STAGES: tuple[tuple[str, ...], ...] = (
    ("gradhealth._version", "gradhealth.errors"),
    ("gradhealth.zoo", "gradhealth.measure"),
    ("gradhealth.rules",),
    ("gradhealth.store",),
    ("gradhealth.report",),
    ("gradhealth.fixes", "gradhealth.clip"),
    ("gradhealth.training",),
    ("gradhealth._probe", "gradhealth._fix", "gradhealth._watch", "gradhealth"),
    ("gradhealth.integrations", "gradhealth.lab"),
    ("gradhealth.cli", "gradhealth.__main__"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The gradhealth module ``name`` refers to (a module, or the module holding it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, source: str | None = None) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "gradhealth" or name.startswith("gradhealth."):
                target = resolve(name)
                if target is not None and target != module:
                    found.add(target)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def stage(module: str) -> int:
    best: tuple[int, int] | None = None  # (length of the matching prefix, stage)
    for i, prefixes in enumerate(STAGES):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), i)
    if best is None:
        raise AssertionError(f"{module} belongs to no stage; add it to STAGES")
    return best[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_stage():
    for module in MODULES:
        stage(module)


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_no_stage_imports_a_later_one():
    upward = sorted(f"{m} (stage {stage(m)}) imports {t} (stage {stage(t)})"
                    for m, targets in GRAPH.items() for t in targets if stage(t) > stage(m))
    assert upward == []


def test_the_checker_sees_cycles_and_upward_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert stage("gradhealth.measure.stats") < stage("gradhealth.rules.depth")
    assert stage("gradhealth.rules.finding") < stage("gradhealth.training.watch")
    assert stage("gradhealth") > stage("gradhealth.training.watch")


def test_lazy_and_relative_imports_are_dependencies_too():
    source = ("import torch\n"
              "def f():\n"
              "    from gradhealth.training.watch import Watch\n"
              "    from ..rules import depth\n"
              "    import gradhealth.store.reader\n")
    assert imports("gradhealth.measure.stats", source) == {
        "gradhealth.training.watch", "gradhealth.rules.depth", "gradhealth.store.reader"}
