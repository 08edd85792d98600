"""The layer table of the architecture: a lower layer never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LAYERS = {
    "agw.types": 0,
    "agw.clock": 0,
    "agw.sse": 0,
    "agw.errors": 0,
    "agw.settings": 0,
    "agw.logs": 0,
    "agw.envfile": 0,
    "agw.ids": 0,
    "agw.jsonfast": 0,
    "agw.procgroup": 0,
    "agw.version": 0,
    "agw.edge": 0,
    "agw.rpcids": 0,
    "agw.config": 1,
    "agw.store": 2,
    "agw.runtime": 3,
    "agw.auth": 3,
    "agw.usage": 3,
    "agw.request": 3,
    "agw.tracing": 3,
    "agw.llm": 4,
    "agw.mcp": 4,
    "agw.acp": 4,
    "agw.admin": 4,
    "agw.dataplane": 4,
    "agw.server": 5,
    "agw.listener": 5,
    "agw.cli": 5,
    "agwd": 5,
    "agwctl": 5,
}
PLANES = ("agw.llm", "agw.mcp", "agw.acp")


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


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_every_module_has_a_layer() -> None:
    for pkg in ("agw", "agwd", "agwctl"):
        for path in (REPO / pkg).rglob("*.py"):
            name = module_name(path)
            if name != "agw":
                assert layer_of(name) is not None, f"{name} is not in the layer table"


def test_no_upward_imports() -> None:
    violations = []
    for pkg in ("agw", "agwd", "agwctl"):
        for path in (REPO / pkg).rglob("*.py"):
            name = module_name(path)
            own = layer_of(name)
            if own is None:
                continue
            for target in imports(path):
                other = layer_of(target)
                if other is None or other[0] == own[0]:
                    continue
                if other[1] > own[1]:
                    violations.append(f"{name} (L{own[1]}) imports {target} (L{other[1]})")
                if own[0] in PLANES and other[0] in PLANES:
                    violations.append(f"{name} imports another plane: {target}")
    assert not violations, "\n".join(violations)
