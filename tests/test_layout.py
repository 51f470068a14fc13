"""The package's layout: imports flow one way, and no module keeps a lock."""

from __future__ import annotations

import ast
from pathlib import Path

import flask_sessionext

PACKAGE = Path(flask_sessionext.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, at
    module level, in functions or under ``TYPE_CHECKING`` alike.
    """
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                target = (
                    ".".join([*base, node.module] if node.module else base)
                    if node.level
                    else node.module or ""
                )
                subs = {f"{target}.{alias.name}" for alias in node.names}
                found = subs & modules.keys() or ({target} & modules.keys())
                targets |= found
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names} & modules.keys()
        graph[name] = targets - {name}
    return graph


def test_no_import_cycle() -> None:
    """No module of the package imports, directly or not, one that imports
    it back: the import graph flows one way.
    """
    graph = _imports()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_no_module_level_lock() -> None:
    """No module creates a lock at module level: a lock that a thread holds
    across ``fork()`` stays held in the child for good.
    """
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                source = ast.unparse(node)
                where = f"{path.relative_to(PACKAGE)}: {source}"
                assert "Lock(" not in source, where
                assert "Semaphore(" not in source, where
