"""The layering and the rooms, checked from the source (ast, no imports run):

- no import circle between modules, counting function-local imports too (a circle hidden by a
  function-local import is still a circle: a helper in the wrong room);
- no upward import: decoders never import pipelines or jobs, pipelines never import jobs;
- no switch on a job kind outside jobs/kinds/ (a kind is one file there).
"""

from __future__ import annotations

import ast
import os
import re

from tests.conftest import REPO

PACKAGES = ("pipelines", "jobs", "decoders", "infra")
LAYER = {"decoders": 0, "pipelines": 1, "infra": 1, "jobs": 2}  # a module imports its own layer or lower ones


def module_files() -> dict[str, str]:
    """Every module of the four packages: dotted name -> path."""
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    modules[dotted.removesuffix(".__init__")] = path
    return modules


def imports_of(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The project modules `name` imports anywhere in its file (top level or inside functions)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from a import b` imports the module a.b when there is one, else names from a.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_local_imports():
    graph = import_graph()
    assert "jobs.train.driver" in graph["jobs.kinds.train_decoder"]  # imported inside `run`
    assert "jobs.kinds" in graph["jobs.spec"]


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_upward_imports():
    upward = [f"{module} -> {target}" for module, targets in import_graph().items() for target in targets
              if LAYER[target.split(".")[0]] > LAYER[module.split(".")[0]]]
    assert upward == []


KIND_SWITCH = re.compile(r"spec\.kind ==|hasattr\(spec,|isinstance\(spec,|getattr\(spec, [\"']|"
                         r"[\"'](generate-video|train-decoder|redecode)[\"']")


def test_no_switch_on_kinds_outside_their_files():
    """A kind is one file in jobs/kinds/ (its spec, stages, plan, pipeline); nothing else asks which kind
    a spec is. jobs/train/ is the train-decoder kind's own wing; jobs/eval/ reads outputs, not specs."""
    switches = []
    for name, path in module_files().items():
        if name.startswith(("jobs.kinds", "jobs.train", "jobs.eval")):
            continue
        for number, line in enumerate(open(path, encoding="utf-8"), 1):
            if KIND_SWITCH.search(line):
                switches.append(f"{name}:{number}: {line.strip()}")
    assert switches == []


def unexplained_local_imports(source: str) -> list[int]:
    """Lines of function-local imports with no `# why` comment. A run of adjacent imports shares one
    comment, on its first import's line or the line above it."""
    lines = source.splitlines()
    found = []

    def explained(node) -> bool:
        return "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")

    def visit(body: list) -> None:
        previous = None
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if not (isinstance(previous, (ast.Import, ast.ImportFrom)) or explained(node)):
                    found.append(node.lineno)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    if isinstance(getattr(node, field, None), list):
                        visit(getattr(node, field))
            previous = node

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            visit(node.body)
    return sorted(set(found))


def test_the_local_import_check_finds_an_unexplained_one():
    source = "def f():\n    x = 1\n    import torch\n    import ray\n\n\ndef g():\n    # torch: actors only\n    import torch\n"
    assert unexplained_local_imports(source) == [3]


def test_every_function_local_import_says_why():
    """Function-local imports only keep heavy dependencies (torch, diffusers, ray...) out of processes
    that never need them, or keep `latentmill`'s start fast; each says which, in a comment."""
    unexplained = [f"{name}:{line}" for name, path in module_files().items()
                   for line in unexplained_local_imports(open(path, encoding="utf-8").read())]
    assert unexplained == []
