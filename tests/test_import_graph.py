"""The packages import one way: no module of trainer/, kohya_gui/ or captioning/ imports, at module
level, a module that imports it back (directly or round a longer circle). A circle makes the import
order matter and usually means a shared piece belongs one floor down."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "kohya_gui", "captioning")


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def top_level_imports(tree: ast.Module):
    """Import statements that run when the module is imported: not those inside functions or classes,
    nor under `if TYPE_CHECKING:`."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            pending += [] if _is_type_checking(node) else node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.With):
            pending += node.body


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    targets = set()
    for node in top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
            continue
        if node.level:
            base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        submodules = {f"{source}.{alias.name}" for alias in node.names} & known   # `from pkg import submodule`
        targets |= submodules
        if len(submodules) < len(node.names):
            targets.add(source)
    return {t for t in targets if t in known and t != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_finder_sees_a_circle_when_there_is_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_to_the_modules_they_name(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import thing\n")
    (pkg / "a.py").write_text("from . import b\nfrom .b import other\n\ndef f():\n    from .c import late\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    assert imported_modules("pkg", pkg / "__init__.py", known) == {"pkg.a"}
    assert imported_modules("pkg.a", pkg / "a.py", known) == {"pkg.b"}, "a function-level import is not an edge"


def test_the_project_imports_without_a_circle():
    graph = import_graph()
    assert "trainer.networks.checks" in graph and "kohya_gui.app" in graph, "the walk found the packages"
    found = circles(graph)
    assert not found, "import circles (move the shared piece one floor down): " + "; ".join(
        " ↔ ".join(group) for group in found)
