"""Finding, enabling and registering plugins, and building the message-type registry.

Plugins come from three places and take one path through :func:`load_plugins`:
the bundled ``plugins/`` directory (the built-in types), the directories in
``plugins.paths`` (one ``*.py`` file per plugin, named by its file stem), and installed
packages that declare an entry point in the ``miaws`` group (named by the entry point).
Only names listed in ``plugins.enabled`` are imported and registered; the rest are blocked,
like pytest's ``-p no:NAME``.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
from pluggy import HookImpl

from miaws.core import hookspecs
from miaws.core.errors import ConfigError
from miaws.core.model import MessageType
from miaws.core.schemas import Schema, load_schema

__all__ = [
    "PluginSources",
    "Registry",
    "load_plugins",
    "build_registry",
    "bundled_plugins_dir",
    "bundled_schemas_dir",
]

ENTRY_POINT_GROUP = "miaws"


@dataclass(frozen=True)
class PluginSources:
    """Where plugins and schemas come from and which plugins run (``plugins.*``,
    ``schemas.path``); ``source`` names the config file in error messages; ``config`` is
    what ``register_message_types(config)`` gets (the node's settings; the core reads none
    of it)."""

    enabled: Sequence[str]
    paths: Sequence[str] = ()
    schemas_path: str | None = None
    source: str = "defaults"
    config: Any = field(default=None, compare=False)


def bundled_plugins_dir() -> Path:
    return Path(str(importlib.resources.files("miaws.bundled_plugins")))


def bundled_schemas_dir() -> Path:
    return Path(str(importlib.resources.files("miaws.bundled_schemas")))


def _module_from_path(name: str, path: Path) -> ModuleType:
    module_name = f"miaws_plugin_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def discover(sources: PluginSources) -> dict[str, Callable[[], Any]]:
    """Plugin name -> loader, for every plugin that could be enabled.  Nothing is imported."""
    found: dict[str, Callable[[], Any]] = {}
    origin: dict[str, str] = {}  # name -> where it was found, for the clash message
    directories = [bundled_plugins_dir()] + [Path(p) for p in sources.paths]
    for directory in directories:
        if not directory.is_dir():
            raise ConfigError(
                f"{sources.source}: plugins.paths has value '{directory}'; "
                "expected a directory that exists"
            )
        for path in sorted(directory.glob("*.py")):
            if not path.stem.startswith("_"):
                _claim(origin, path.stem, str(path), sources.source)
                found[path.stem] = functools.partial(_module_from_path, path.stem, path)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _claim(origin, ep.name, f"entry point {ep.value}", sources.source)
        found[ep.name] = ep.load
    return found


def _claim(origin: dict[str, str], name: str, where: str, source: str) -> None:
    """One plugin per name: a second one (a file named like a built-in, a file and an
    installed package) stops start-up naming both, instead of one silently replacing the
    other."""
    if name in origin:
        raise ConfigError(
            f"{source}: two plugins are named {name!r}: {origin[name]} and {where}; "
            "rename one (plugins are enabled by name)"
        )
    origin[name] = where


def load_plugins(sources: PluginSources) -> pluggy.PluginManager:
    """A plugin manager with exactly the enabled plugins registered and checked."""
    pm = pluggy.PluginManager("miaws")
    pm.add_hookspecs(hookspecs)
    available = discover(sources)
    missing = [n for n in sources.enabled if n not in available]
    if missing:
        raise ConfigError(
            f"{sources.source}: plugins.enabled has value '{missing[0]}'; expected "
            f"the name of an available plugin ({', '.join(sorted(available))})"
        )
    for name in available:
        if name not in sources.enabled:
            pm.set_blocked(name)
    for name in sources.enabled:
        try:
            plugin = available[name]()
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"plugin {name!r} failed to import: {type(exc).__name__}: {exc}"
            ) from None
        pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {pm.get_name(exc.plugin)!r}: {exc}") from None
    if os.environ.get("MIAWS_TRACE_PLUGINS") == "1":
        _trace(pm)
    return pm


def _trace(pm: pluggy.PluginManager) -> None:
    def before(hook_name: str, impls: Sequence[HookImpl], kwargs: Mapping[str, Any]) -> None:
        print(
            f"miaws: hook {hook_name}({', '.join(kwargs)}) -> {[i.plugin_name for i in impls]}",
            file=sys.stderr,
        )

    def after(outcome: Any, hook_name: str, impls: Any, kwargs: Any) -> None:
        pass

    pm.add_hookcall_monitoring(before, after)


def _per_plugin(pm: pluggy.PluginManager, hook: str, **kwargs: Any) -> list[tuple[HookImpl, Any]]:
    """Call hook once per implementation, through pluggy (so MIAWS_TRACE_PLUGINS sees each
    call), keeping which plugin returned what (a plain hook call loses that)."""
    impls = getattr(pm.hook, hook).get_hookimpls()
    others = [i.plugin for i in impls]
    results = []
    for impl in impls:
        caller = pm.subset_hook_caller(hook, [p for p in others if p is not impl.plugin])
        results.append((impl, [item for result in caller(**kwargs) for item in result or []]))
    return results


def _own_folder(plugin: object) -> list[Path]:
    """The folder of a plugin's module (an installed package's or a plugin file's): its
    schema files are looked up there first, then in ``schemas.path``, then the bundled ones."""
    path = getattr(plugin, "__file__", None)
    return [Path(path).parent] if path else []


@dataclass(frozen=True)
class BoundType:
    """A message type with its compiled schema and the plugin that provides it."""

    descriptor: MessageType
    schema: Schema
    plugin: str


@dataclass(frozen=True)
class Registry:
    """Everything the dispatch core needs from plugins, built at start-up and on reload."""

    pm: pluggy.PluginManager
    types: dict[str, BoundType]

    @property
    def has_authorizers(self) -> bool:
        return bool(self.pm.hook.authorize_message.get_hookimpls())

    def plugins_info(self) -> list[dict[str, Any]]:
        out = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            out.append(
                {
                    "name": name,
                    "hooks": sorted(h.name for h in self.pm.get_hookcallers(plugin) or []),
                    "messageTypes": sorted(t for t, b in self.types.items() if b.plugin == name),
                    "version": getattr(plugin, "__version__", None),
                }
            )
        return out


def build_registry(sources: PluginSources) -> Registry:
    """Load plugins, collect their message types and compile every schema."""
    pm = load_plugins(sources)
    directories = ([Path(sources.schemas_path)] if sources.schemas_path else []) + [
        bundled_schemas_dir()
    ]
    if sources.schemas_path and not directories[0].is_dir():
        raise ConfigError(
            f"{sources.source}: schemas.path has value '{sources.schemas_path}'; "
            "expected a directory that exists"
        )
    types: dict[str, BoundType] = {}
    for impl, descriptors in _per_plugin(pm, "register_message_types", config=sources.config):
        for descriptor in descriptors:
            if not isinstance(descriptor, MessageType):
                raise ConfigError(
                    f"plugin {impl.plugin_name!r}: register_message_types must "
                    f"return MessageType objects, got {descriptor!r}"
                )
            if descriptor.type in types:
                other = types[descriptor.type].plugin
                raise ConfigError(
                    f"message type {descriptor.type!r} is claimed by two plugins: "
                    f"{other!r} and {impl.plugin_name!r}"
                )
            schema = load_schema(
                descriptor.type, descriptor.schema, [*_own_folder(impl.plugin), *directories]
            )
            types[descriptor.type] = BoundType(descriptor, schema, impl.plugin_name)
    return Registry(pm, types)
