"""The package's modules form layers: no import cycle, counting imports inside functions.

    context < engine < phase modules < plans (deploy.py) < worker/recovery < entry points

An import inside a function hides a cycle from Python but not from a reader; here it is
an edge like any other, and allowed at all only where ALLOWED_LOCAL says why.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# the repository's top-level directories and the packages they are installed as
PACKAGES = {
    "shipyard": "shipyard",
    "hooks": "shipyard.hooks",
    "receiver": "shipyard.receiver",
    "provision": "shipyard.provision",
}
# (importer, imported): why that import sits inside a function. "*": every project import.
ALLOWED_LOCAL = {
    # each command loads only the modules it runs, so `shipyard --help`, `status` and the
    # forced SSH command start fast
    ("shipyard.cli", "*"): "start-up speed",
    # the deploy's modules load in the forked push worker only: a hook that refuses a push,
    # and `shipyard log`, which follows a log with this module, never load them
    ("shipyard.hooks.worker", "shipyard.worker"): "start-up speed",
    ("shipyard.hooks.worker", "shipyard.operate"): "start-up speed",
    # the forced SSH command sets safe_umask before it execs git-receive-pack: without
    # loading the host config's parser (tomllib), which git's hooks load for themselves
    ("shipyard.guard", "shipyard.config"): "start-up speed",
    # the launcher of every process (python -S) loads app's dataclasses and pathlib, and
    # programs' parsers, only for what programs.conf did not decide (shipyard/launch.py)
    ("shipyard.launch", "shipyard.app"): "start-up speed",
    ("shipyard.launch", "shipyard.programs"): "start-up speed",
}


def modules() -> dict[str, Path]:
    found = {}
    for top, package in PACKAGES.items():
        for path in (REPO / top).rglob("*.py"):
            parts = [package, *path.relative_to(REPO / top).with_suffix("").parts]
            name = ".".join(parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, bool, int]]:
    """(imported project module, inside a function?, line) for every import in the file."""
    found: list[tuple[str, bool, int]] = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target if target and target != name else None

    def walk(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - child.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [f"{base}.{a.name}" for a in child.names]
            else:
                targets = []
            for target in targets:
                module = resolve(target)
                if module:
                    found.append((module, local, child.lineno))
            inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            walk(child, local or inner)

    walk(ast.parse(path.read_text()), False)
    return found


def graph() -> tuple[dict[str, set[str]], list[str]]:
    """Every module's imports, and the function-local ones no allow-list entry covers."""
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    unexplained = []
    for name, path in mods.items():
        for module, local, line in imports(name, path, set(mods)):
            edges[name].add(module)
            allowed = (name, "*") in ALLOWED_LOCAL or (name, module) in ALLOWED_LOCAL
            if local and not allowed:
                unexplained.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return edges, unexplained


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_counting_function_local_imports():
    edges, _ = graph()
    assert cycles(edges) == []


def test_no_function_local_import_of_a_project_module_without_a_reason():
    _, unexplained = graph()
    assert unexplained == [], "import at the top, or add to ALLOWED_LOCAL with the reason"


def test_every_allowed_local_import_is_still_there():
    edges, _ = graph()
    stale = [
        k for k in ALLOWED_LOCAL if k[0] not in edges or (k[1] != "*" and k[1] not in edges[k[0]])
    ]
    assert stale == []


def test_the_checker_sees_a_cycle_made_by_a_function_local_import(tmp_path: Path):
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import a\n")
    found = {}
    for n in ("a", "b"):
        found[f"p.{n}"] = imports(f"p.{n}", tmp_path / f"{n}.py", {"p.a", "p.b"})
    assert found["p.b"] == [("p.a", True, 2)]
    edges = {m: {t for t, _, _ in found[m]} for m in found}
    assert cycles(edges) == [["p.a", "p.b"]]


def test_fault_injection_is_imported_only_where_its_points_are():
    """Test-only code, in a module whose name says so: only the fault points reach it."""
    edges, _ = graph()
    importers = {m for m, targets in edges.items() if "shipyard.fault_injection" in targets}
    points = {"shipyard.engine", "shipyard.peers", "shipyard.hooks.proc_receive"}
    assert importers == points | {"shipyard.supervise"}  # settle
    assert "shipyard.faults" not in edges
