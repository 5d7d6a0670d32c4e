"""The house rules from DESIGN.md, checked on the source: imports point one way,
Flask stays in the web faces, no module but config reads the environment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from marketplace.config import PROJECT_ROOT

PACKAGES = ("marketplace", "storage", "inference")
WEB_FACES = {"marketplace/api.py", "marketplace/oip.py", "marketplace/storefront.py", "app.py"}


def _modules() -> list[Path]:
    files = [PROJECT_ROOT / "app.py"]
    for pkg in PACKAGES:
        files += sorted((PROJECT_ROOT / pkg).rglob("*.py"))
    return [f for f in files if f.exists()]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_module_follows_house_rules(path: Path):
    rel = str(path.relative_to(PROJECT_ROOT))
    imported = _imports(path)
    if rel.startswith("storage/"):
        assert not imported & {"marketplace", "inference"}, f"{rel} imports upward"
    if rel.startswith("inference/"):
        assert not imported & {"marketplace", "storage"}, f"{rel} imports upward"
    if rel not in WEB_FACES:
        assert "flask" not in imported, f"{rel} imports Flask outside the web faces"
    if rel != "marketplace/config.py":
        source = path.read_text()
        # Passing the environment through to a child ({**os.environ, ...}) is fine;
        # reading a setting from it is Settings' job alone.
        for read in ("os.environ[", "os.environ.get", "getenv"):
            assert read not in source, f"{rel} reads the environment; go through Settings"


def test_no_grab_bag_modules():
    names = {p.stem for p in _modules()}
    assert not names & {"utils", "util", "helpers", "common", "misc"}
