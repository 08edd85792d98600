"""The layer table of the architecture (docs/architecture.md): a lower layer never imports a
higher one, a plane never imports another plane, no module imports itself back through others
(a circle), a function-local import never hides an upward or circular import, and the admin API
reaches a plane only through the plane's ``__init__`` (``__all__``)."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LAYERS = {
    "agw.types": 0,
    "agw.errors": 0,
    "agw.clock": 0,
    "agw.sse": 0,
    "agw.ids": 0,
    "agw.jsonfast": 0,
    "agw.procgroup": 0,
    "agw.logs": 0,
    "agw.version": 0,
    "agw.settings": 0,
    "agw.envfile": 0,
    "agw.edge": 0,
    "agw.rpcids": 0,
    "agw.head": 0,
    "agw.config": 1,
    "agw.store": 2,
    "agw.runtime": 3,
    "agw.auth": 3,
    "agw.policy": 3,
    "agw.usage": 3,
    "agw.request": 3,
    "agw.tracing": 3,
    "agw.llm": 4,
    "agw.mcp": 4,
    "agw.acp": 4,
    "agw.a2a": 4,
    "agw.admin": 4,
    "agw.dataplane": 4,
    "agw.server": 5,
    "agw.listener": 5,
    "agw.listener_cycle": 5,
    "agw.workers": 5,  # agwd --workers: the supervisor and what a worker is given
    "agw.cli": 5,
    "agwd": 5,
    "agwctl": 5,
}
PLANES = ("agw.llm", "agw.mcp", "agw.acp", "agw.a2a")
MAX_MODULE_LINES = 600


def layer_of(module: str) -> tuple[str, int] | None:
    best = None
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, layer)
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Iterator[tuple[str, Path]]:
    for pkg in ("agw", "agwd", "agwctl"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            yield module_name(path), path


OURS = dict(modules())


def resolve(module: str, name: str | None = None) -> str | None:
    """The module of ours an import binds: ``from a.b import c`` is ``a.b.c`` when that is a
    module, else ``a.b``."""
    if name is not None and f"{module}.{name}" in OURS:
        return f"{module}.{name}"
    return module if module in OURS else None


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(path: Path) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import of a module, and whether it runs when the module is imported (top level,
    not under ``if TYPE_CHECKING``) as opposed to inside a function."""

    def walk(body: list[ast.stmt], top: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node, top
            elif isinstance(node, ast.If) and _type_checking(node):
                continue
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from walk(node.body, False)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    inner = getattr(node, field, None)
                    if isinstance(inner, list):
                        stmts = [s for s in inner if isinstance(s, ast.stmt)]
                        stmts += [
                            s for h in inner if isinstance(h, ast.ExceptHandler) for s in h.body
                        ]
                        yield from walk(stmts, top)

    yield from walk(ast.parse(path.read_text()).body, True)


def targets(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The modules named by an import (ours or not)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.module is None or node.level:
        return set()
    found = {node.module}
    found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def our_targets(node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {t for alias in node.names if (t := resolve(alias.name)) is not None}
    if node.module is None or node.level:
        return set()
    return {t for alias in node.names if (t := resolve(node.module, alias.name)) is not None}


def graph() -> dict[str, set[str]]:
    """Module-level imports between our modules."""
    edges: dict[str, set[str]] = {name: set() for name in OURS}
    for name, path in OURS.items():
        for node, top in import_nodes(path):
            if top:
                edges[name] |= our_targets(node) - {name}
    return edges


def reaches(edges: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def test_every_module_has_a_layer() -> None:
    for name in OURS:
        if name != "agw":
            assert layer_of(name) is not None, f"{name} is not in the layer table"


def test_no_upward_imports() -> None:
    violations = []
    for name, path in OURS.items():
        own = layer_of(name)
        if own is None:
            continue
        for node, _ in import_nodes(path):
            for target in targets(node):
                other = layer_of(target)
                if other is None or other[0] == own[0]:
                    continue
                if other[1] > own[1]:
                    violations.append(f"{name} (L{own[1]}) imports {target} (L{other[1]})")
                if own[0] in PLANES and other[0] in PLANES:
                    violations.append(f"{name} imports another plane: {target}")
    assert not violations, "\n".join(sorted(set(violations)))


def test_no_import_circles() -> None:
    edges = graph()
    circles = sorted(
        f"{a} -> {b} -> ... -> {a}" for a in edges for b in edges[a] if reaches(edges, b, a)
    )
    assert not circles, "\n".join(circles)


def test_no_function_local_import_hides_a_circle() -> None:
    """A function-local import is for what is costly or optional to load (the OpenTelemetry
    SDK), never to dodge a circle: the imported module must not import the importer back."""
    edges = graph()
    hidden = []
    for name, path in OURS.items():
        for node, top in import_nodes(path):
            if top:
                continue
            for target in our_targets(node):
                if target != name and reaches(edges, target, name):
                    hidden.append(f"{name} imports {target} inside a function: a circle")
    assert not hidden, "\n".join(sorted(set(hidden)))


def test_planes_export_all() -> None:
    for plane in PLANES:
        module = importlib.import_module(plane)
        exported = getattr(module, "__all__", None)
        assert exported, f"{plane}/__init__.py has no __all__"
        missing = [n for n in exported if not hasattr(module, n)]
        assert not missing, f"{plane}.__all__ names what it does not define: {missing}"


def test_admin_and_server_reach_planes_through_their_init() -> None:
    bad = []
    for name, path in OURS.items():
        if not (name.startswith("agw.admin") or name == "agw.server"):
            continue
        for node, _ in import_nodes(path):
            if isinstance(node, ast.ImportFrom) and node.module:
                plane = next(
                    (p for p in PLANES if node.module == p or node.module.startswith(p + ".")), None
                )
                if plane is None:
                    continue
                exported = getattr(importlib.import_module(plane), "__all__", ())
                if node.module != plane:
                    bad.append(f"{name} imports {node.module}: use {plane} (its __all__)")
                else:
                    bad += [
                        f"{name} imports {plane}.{a.name}, not in its __all__"
                        for a in node.names
                        if a.name not in exported
                    ]
            elif isinstance(node, ast.Import):
                bad += [
                    f"{name} imports {a.name}"
                    for a in node.names
                    if any(a.name.startswith(p + ".") for p in PLANES)
                ]
    assert not bad, "\n".join(sorted(set(bad)))


def test_no_module_over_the_limit() -> None:
    long = []
    for name, path in OURS.items():
        if name.startswith("agw"):
            lines = len(path.read_text().splitlines())
            if lines > MAX_MODULE_LINES:
                long.append(f"{name}: {lines} lines")
    assert not long, "\n".join(long)
