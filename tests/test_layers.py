"""The architecture's rules (docs/architecture.md), kept by reading the code's own imports."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import miaws
from miaws.core.errors import MiawsError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "miaws"

# What each layer may import, besides the standard library and itself.  A prefix allows its
# submodules too.
ALLOWED: dict[str, tuple[str, ...]] = {
    "core": ("pluggy", "jsonschema", "jsonschema_rs", "orjson", "miaws.core"),
    "broker": ("redis", "hiredis", "miaws.core", "miaws.broker", "miaws.config"),
    "integration": ("aiohttp", "orjson", "miaws.core", "miaws.integration"),
    "transport": (
        "tornado",
        "socketio",
        "engineio",
        "jwt",
        "orjson",
        "miaws.core",
        "miaws.integration",
        "miaws.transport",
        "miaws.config",
        "miaws.service",
    ),
}
THIRD_PARTY_EVERYWHERE = ("typing_extensions",)


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module path imports (absolute names; relative imports resolved), with its line."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.append((base, node.lineno))
            if base == "miaws":  # from miaws import core -> miaws.core
                found += [(f"miaws.{a.name}", node.lineno) for a in node.names]
    return found


def allowed(name: str, prefixes: tuple[str, ...]) -> bool:
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top == "__future__" or top in THIRD_PARTY_EVERYWHERE:
        return True
    if name == "miaws":  # the package itself: only what it exports, checked below
        return True
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports(layer: str) -> None:
    """core imports no I/O library and nothing above it; broker, integration and transport
    only what they stand on (transport never a broker implementation)."""
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for name, line in imports(path)
        if not allowed(name, ALLOWED[layer])
    ]
    assert not bad, "\n".join(bad)


def test_only_the_factory_names_a_broker() -> None:
    """Outside miaws/broker/ nothing imports a broker implementation (only the factory)."""
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "broker" not in path.relative_to(PACKAGE).parts
        for name, line in imports(path)
        if name.startswith("miaws.broker.") and name.split(".")[2] in ("redis", "memory")
    ]
    assert not bad, "\n".join(bad)


def test_builtin_plugins_use_only_public_names() -> None:
    """plugins/*.py import from miaws only what miaws exports, as a third-party plugin must."""
    bad = []
    for path in sorted((ROOT / "plugins").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("miaws"):
                if node.module != "miaws":
                    bad.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
                else:
                    bad += [
                        f"{path.name}:{node.lineno}: {a.name} is not in miaws.__all__"
                        for a in node.names
                        if a.name not in miaws.__all__
                    ]
            elif isinstance(node, ast.Import):
                bad += [
                    f"{path.name}:{node.lineno}: import {a.name}"
                    for a in node.names
                    if a.name.startswith("miaws")
                ]
    assert not bad, "\n".join(bad)


def test_top_level_exports_resolve() -> None:
    """Every name in miaws.__all__ resolves (lazily) and names the object of its module."""
    assert set(miaws.__all__) == {*miaws._EXPORTS, "__version__"}
    for name, module in miaws._EXPORTS.items():
        assert getattr(miaws, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError):
        miaws.nope  # noqa: B018


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], "miaws.") if m.name)


def test_every_exception_derives_from_miaws_error() -> None:
    """Each exception class miaws defines is a MiawsError (the tree in miaws.core.errors)."""
    bad = []
    for name in _modules():
        if name == "miaws.__main__":
            continue
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not issubclass(value, MiawsError)
            ):
                bad.append(f"{name}.{attr}")
    assert not bad, bad


LIGHT = ("yaml", "jwt", "jsonschema", "pluggy", "tornado", "redis", "socketio", "miaws.config")


@pytest.mark.parametrize(
    ("module", "heavy"),
    [
        ("miaws.client", LIGHT),
        ("miaws.cli.main", ("jwt", "jsonschema", "pluggy", "tornado", "redis", "socketio")),
    ],
)
def test_light_imports(module: str, heavy: tuple[str, ...]) -> None:
    """The client library costs only the client; the command loads no server module until a
    server command runs."""
    code = f"import sys, {module}; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert out == "", f"import {module} loaded: {out}"
