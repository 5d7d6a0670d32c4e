"""The house rules from DESIGN.md, checked on the source: imports point one way and
never in a circle, Flask stays in the web faces and click in the CLI, production code
never reaches the embedded devstack, no module but config reads the environment, and no
module grows past what one reader holds in their head."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

from marketplace.config import PROJECT_ROOT

PACKAGES = ("marketplace", "storage", "inference")
MAX_LINES = 400
# The one command that starts the embedded default (anvil, a deploy, gunicorn).
DEVSTACK_LAUNCHERS = {"marketplace.cli.operator"}


def _modules() -> list[Path]:
    files = [PROJECT_ROOT / "app.py"]
    for pkg in PACKAGES:
        files += sorted((PROJECT_ROOT / pkg).rglob("*.py"))
    return [f for f in files if f.exists()]


def _name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, name: str | None = None) -> str:
    """The module an import names: `from a.b import c` is a.b.c when c is a module."""
    if name is not None:
        candidate = f"{module}.{name}"
        base = PROJECT_ROOT / candidate.replace(".", "/")
        if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
            return candidate
    return module


@cache
def _imports(path: Path) -> frozenset[str]:
    """Every module `path` imports, at any depth in the file (lazy imports count)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {_resolve(node.module, alias.name) for alias in node.names}
    return frozenset(names)


def _tops(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _imports(path)}


def _graph() -> dict[str, set[str]]:
    """Our modules and the modules of ours each imports."""
    modules = {_name(p): p for p in _modules()}
    return {
        name: {i for i in _imports(path) if i in modules and i != name}
        for name, path in modules.items()
    }


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_module_follows_house_rules(path: Path):
    rel = str(path.relative_to(PROJECT_ROOT))
    imported = _tops(path)
    if rel.startswith("storage/"):
        assert not imported & {"marketplace", "inference"}, f"{rel} imports upward"
    if rel.startswith("inference/"):
        assert not imported & {"marketplace", "storage"}, f"{rel} imports upward"
    if not (rel.startswith("marketplace/web/") or rel == "app.py"):
        assert "flask" not in imported, f"{rel} imports Flask outside the web faces"
    if not rel.startswith("marketplace/cli/"):
        assert "click" not in imported, f"{rel} imports click outside the CLI"
    if not rel.startswith("marketplace/devstack/") and _name(path) not in DEVSTACK_LAUNCHERS:
        devstack = {i for i in _imports(path) if i.startswith("marketplace.devstack")}
        assert not devstack, f"{rel} imports the embedded devstack: {devstack}"
    if rel != "marketplace/config.py":
        source = path.read_text()
        # Passing the environment through to a child ({**os.environ, ...}) is fine;
        # reading a setting from it is Settings' job alone.
        for read in ("os.environ[", "os.environ.get", "getenv"):
            assert read not in source, f"{rel} reads the environment; go through Settings"
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{rel} has {lines} lines; split it by concern"


def test_no_grab_bag_modules():
    names = {p.stem for p in _modules()}
    assert not names & {"utils", "util", "helpers", "common", "misc"}


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("entry", ["app", "marketplace.bootstrap", "marketplace.web"])
def test_what_production_runs_never_reaches_devstack(entry: str):
    """The gateway and the indexer process, followed through every import they make."""
    graph = _graph()
    seen, todo = {entry}, [entry]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert not {m for m in seen if m.startswith("marketplace.devstack")}
    assert "marketplace.cli.operator" not in seen
