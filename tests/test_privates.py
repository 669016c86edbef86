"""Third-party internals are fenced: every private Tornado name miaws uses is declared in
miaws.transport.tornado_private, every python-engineio/python-socketio one in
miaws.transport.engineio_private, and each declared name exists in the installed version.

The meta-test reads miaws's source: an attribute ``x._name`` (or a private import, or an
overriding method) whose name is a private name defined by one of those libraries, and not
miaws's own, must be declared; a declared name that miaws no longer uses must go.  A name
counts as miaws's own when miaws defines it in a class whose library bases do not have it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.iostream

from miaws.service import Service
from miaws.transport import engineio_private, tornado_private

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = {"tornado": ("tornado",), "engineio": ("engineio", "socketio")}


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    try:
        return importlib.import_module(dotted)
    except ImportError:
        return getattr(importlib.import_module(module), name)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


# ------------------------------------------------------------------ canaries
@pytest.mark.parametrize(
    ("owner", "name"),
    [(o, n) for o, names in tornado_private.CLASS_NAMES.items() for n in names]
    + [(o, n) for o, names in tornado_private.MODULE_NAMES.items() for n in names]
    + [(o, n) for o, names in engineio_private.PRIVATE.items() for n in names],
)
def test_declared_name_exists(owner: str, name: str) -> None:
    assert hasattr(_resolve(owner), name), f"{owner} has no {name}: see its *_private module"


async def test_tornado_instance_names_exist(
    ws_connect: Any, service: Service, http_server: Any
) -> None:
    """On the real objects of a live connection: its stream, protocol and handler, and the
    node's HTTP server."""
    await ws_connect()
    (client,) = service.local.clients()
    protocol: Any = client.protocol  # type: ignore[attr-defined]
    a, b = socket.socketpair()
    try:
        fresh = tornado.iostream.IOStream(a)  # a stream as Tornado makes it (deques, not lists)
        objects = {
            "tornado.iostream.BaseIOStream": [fresh, protocol.stream],
            "tornado.iostream._StreamBuffer": [fresh._write_buffer],
            "tornado.websocket.WebSocketProtocol13": [protocol],
            "tornado.web.RequestHandler": [client.handler],  # type: ignore[attr-defined]
            "tornado.tcpserver.TCPServer": [http_server],
        }
        for owner, names in tornado_private.INSTANCE_NAMES.items():
            cls = _resolve(owner)
            for obj in objects[owner]:
                assert isinstance(obj, cls)
                for name in names:
                    assert hasattr(obj, name), f"{owner} instances have no {name}"
        fresh.close()
    finally:
        b.close()


@pytest.mark.config({"socketio": {"enabled": True}})
async def test_engineio_undocumented_names_exist(service: Service) -> None:
    sio = service.socketio.sio
    objects = {
        "socketio.async_server.AsyncServer": sio,
        "engineio.async_server.AsyncServer": sio.eio,
        "socketio.async_manager.AsyncManager": sio.manager,
    }
    for owner, names in engineio_private.UNDOCUMENTED.items():
        cls = _resolve(owner)
        obj = objects.get(owner, cls)
        assert obj is cls or isinstance(obj, cls)
        for name in names:
            if obj is cls and not hasattr(cls, name):  # set in __init__: read the source
                source = "".join(inspect.getsource(c) for c in cls.__mro__[:-1])
                assert f"self.{name} =" in source, f"{owner} has no {name}"
            else:
                assert hasattr(obj, name), f"{owner} has no {name}"
    for owner, names in engineio_private.PRIVATE_INSTANCE.items():
        obj = objects[owner]
        assert isinstance(obj, _resolve(owner))
        for name in names:
            assert hasattr(obj, name), f"{owner} instances have no {name}"
    driver = inspect.getsource(importlib.import_module("engineio.async_drivers.tornado"))
    for key in engineio_private.ENVIRON_KEYS:
        assert repr(key) in driver, f"Engine.IO's Tornado driver sets no environ[{key!r}]"
    for name in engineio_private.DRIVER_HANDLER_NAMES:
        assert re.search(rf"(def |self\.){name}\b", driver), f"the driver's handler has no {name}"


# ------------------------------------------------------------------ the meta-test
def _library_names(packages: tuple[str, ...]) -> frozenset[str]:
    """Private names the library defines: functions, classes, assigned names and attributes."""
    names: set[str] = set()
    for package in packages:
        root = Path(importlib.import_module(package).__file__ or "").parent
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
    return frozenset(n for n in names if _private(n))


def _library_bases(cls: type) -> list[type]:
    roots = {p for packages in LIBRARIES.values() for p in packages}
    return [c for c in cls.__mro__ if c.__module__.partition(".")[0] in roots]


def _has(bases: list[type], name: str) -> bool:
    """True when one of these library classes has name, as a class or an instance attribute."""
    for base in bases:
        if name in vars(base):
            return True
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):
            continue
        if re.search(rf"self\.{re.escape(name)}\b", source):
            return True
    return False


def _uses(path: Path) -> Iterator[tuple[str, int]]:
    """(private name, line) of every use of a library private in one miaws module."""
    module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = importlib.import_module(module_name)
    own: set[str] = set()  # names this module's own classes define
    library_self: set[ast.AST] = set()  # `self._x` nodes that are library names

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").partition(".")[0] in {
            p for packages in LIBRARIES.values() for p in packages
        }:
            for alias in node.names:
                if _private(alias.name):
                    yield alias.name, node.lineno
    for cls_node in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        cls = getattr(module, cls_node.name, None)
        bases = _library_bases(cls) if isinstance(cls, type) else None
        for item in cls_node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _private(item.name):
                if bases and _has(bases, item.name):
                    yield item.name, item.lineno  # overrides a library private
                else:
                    own.add(item.name)
        for node in ast.walk(cls_node):
            if (
                isinstance(node, ast.Attribute)
                and _private(node.attr)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and bases is not None  # a class we could resolve
            ):
                if bases and _has(bases, node.attr):
                    library_self.add(node)
                    yield node.attr, node.lineno
                else:
                    own.add(node.attr)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and node not in library_self
            and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            and node.attr not in own
        ):
            yield node.attr, node.lineno
        elif (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and node not in library_self
            and node.attr not in own
        ):
            yield node.attr, node.lineno  # self in a class we could not resolve


def test_every_library_private_used_is_declared() -> None:
    declared = {"tornado": tornado_private.declared(), "engineio": engineio_private.declared()}
    names = {lib: _library_names(packages) for lib, packages in LIBRARIES.items()}
    used: dict[str, set[str]] = {lib: set() for lib in LIBRARIES}
    undeclared = []
    for path in sorted((ROOT / "miaws").rglob("*.py")):
        if path.name == "__main__.py":  # importing it runs the command
            continue
        for name, line in _uses(path):
            libs = [lib for lib in LIBRARIES if name in names[lib]]
            for lib in libs:
                used[lib].add(name)
            if libs and not any(name in declared[lib] for lib in libs):
                where = path.relative_to(ROOT)
                undeclared.append(f"{where}:{line}: {name} ({' or '.join(libs)})")
    assert not undeclared, "declare these in miaws/transport/*_private.py:\n" + "\n".join(
        undeclared
    )
    for lib in LIBRARIES:
        stale = declared[lib] - used[lib]
        assert not stale, f"declared for {lib} but not used by miaws: {sorted(stale)}"


def test_the_meta_test_sees_a_new_use(tmp_path: Path) -> None:
    """The scan is not vacuous: the known uses are found where they are."""
    found = {name for name, _ in _uses(ROOT / "miaws/transport/protocol.py")}
    assert {"_write_buffer", "_abort", "_ping_coroutine"} <= found
    assert "_websocket_mask" in {name for name, _ in _uses(ROOT / "miaws/transport/frames.py")}
    assert "_pending" not in found and "_need" not in found  # miaws's own
