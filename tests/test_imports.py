"""The package's import graph: no cycle (function-level imports included), leaves stay leaves, importers on top."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "gft_tokens"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def imported_modules(name: str) -> set[str]:
    """Every package module ``name`` imports, at any depth of its code (function bodies too), plus the packages a
    target sits in that are not also ``name``'s own (their ``__init__`` runs on import)."""
    path = MODULES[name]
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                stem = here[: len(here) - (node.level - 1)]
                base = ".".join(stem + ([node.module] if node.module else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if not t.startswith("gft_tokens"):
                continue
            found.add(t)
            parent = t.rpartition(".")[0]
            while parent and not name.startswith(parent + ".") and parent != name:
                found.add(parent)
                parent = parent.rpartition(".")[0]
    found.discard(name)
    return found


GRAPH = {name: imported_modules(name) for name in MODULES}


def find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            cycle = visit(n)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph["gft_tokens.fs"].add("gft_tokens.families")  # a leaf importing the top would close a loop
    assert find_cycle(graph) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("leaf, allowed", [
    ("gft_tokens.errors", set()),
    ("gft_tokens.fs", {"gft_tokens.errors"}),
    ("gft_tokens.pretrained", {"gft_tokens.errors", "gft_tokens.fs"}),
    ("gft_tokens.importing", {"gft_tokens.errors"}),
])
def test_leaf_modules_import_nothing_above_them(leaf, allowed):
    assert GRAPH[leaf] <= allowed, GRAPH[leaf] - allowed


def test_importers_sit_at_the_top():
    importer_modules = {n for n in MODULES if n.endswith(".importer")} | {"gft_tokens.importers"}
    users = {n for n, deps in GRAPH.items() if deps & importer_modules} - importer_modules
    assert users == set(), f"package modules importing official-checkpoint importers: {sorted(users)}"


def test_no_family_name_branches_outside_the_families_package():
    """The CLIs and shared modules reach a family through its record, never by comparing its name."""
    from gft_tokens.families import FAMILIES

    root = PKG.parent
    offenders = []
    for path in [*PKG.rglob("*.py"), *(root / "scripts").glob("*.py")]:
        if "families" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                names += [e.value for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set))
                          for e in c.elts if isinstance(e, ast.Constant)]
                if any(isinstance(v, str) and v in FAMILIES for v in names):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
