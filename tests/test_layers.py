"""The import graph: layers point one way (cli -> api -> jobs -> verbs -> recipes, store, report -> engine) and no
module imports another that imports it back, counting imports inside functions too."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A package may import only packages of a lower rank (and its own modules).
RANK = {"backend.constants": 0, "backend.settings": 0, "backend.engine": 1, "backend.recipes": 2, "backend.store": 2,
        "backend.report": 2, "backend.verbs": 3, "backend.jobs": 4, "backend.api": 5, "app": 6, "backend.cli": 7}


def modules() -> dict[str, Path]:
    found = {}
    for top in ("backend", "app"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for n in ast.walk(node)}  # imports for type hints only: no import at run time
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def layer(module: str) -> str:
    for prefix in sorted(RANK, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    raise AssertionError(f"{module} belongs to no layer; add its package to RANK")


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_import_points_down_a_layer():
    upward = []
    for module, targets in graph().items():
        for target in targets:
            mine, theirs = layer(module), layer(target)
            if mine != theirs and RANK[theirs] >= RANK[mine]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up or sideways between layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    edges = {m: {t for t in ts if t != m} for m, ts in graph().items()}
    # package __init__ modules re-export their members: an edge into a package's own members is not a cycle
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_engine_and_the_dashboard_import_no_web_or_store_code():
    for module, targets in graph().items():
        if module.startswith("backend.engine"):
            assert not {t for t in targets if not t.startswith(("backend.engine", "backend.constants"))}, module
        if module.startswith("app"):  # constants, and the role arithmetic (numpy and pandas only, no torch)
            assert {t for t in targets if t.startswith("backend")} <= {"backend.constants", "backend.engine.roles"}, \
                module
