"""Where a plugin and its schema come from: name clashes refused, schemas found next to the
plugin first (#16.7, #16.9)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from miaws.config import BUILTIN_PLUGINS, build_settings
from miaws.core.errors import ConfigError
from miaws.core.plugins import build_registry

PLUGIN = """
from miaws import MessageType, hookimpl

def handle(ctx, message):
    return {"type": "shouted", "text": message["text"].upper()}

@hookimpl
def register_message_types():
    return [MessageType("shout", handle)]
"""
SCHEMA = '{"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}'


def sources(enabled: list[str], paths: list[Path]) -> Any:
    data = {"plugins": {"enabled": [*BUILTIN_PLUGINS, *enabled], "paths": [str(p) for p in paths]}}
    return build_settings(data, source="test.yaml", environ={}).plugin_sources()


def test_a_file_named_like_a_builtin_is_refused(tmp_path: Path) -> None:
    """plugins.paths/echo.py does not silently replace the built-in echo: one line names both."""
    (tmp_path / "echo.py").write_text(textwrap.dedent(PLUGIN))
    with pytest.raises(
        ConfigError, match=r"two plugins are named 'echo': \S*echo\.py and \S*echo\.py"
    ):
        build_registry(sources([], [tmp_path]))


def test_two_files_with_one_name_are_refused(tmp_path: Path) -> None:
    """The same stem in two plugins.paths folders is refused too."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "shout.py").write_text(textwrap.dedent(PLUGIN))
    with pytest.raises(ConfigError, match=r"two plugins are named 'shout'"):
        build_registry(sources(["shout"], [tmp_path / "a", tmp_path / "b"]))


def test_schema_next_to_a_plugin_file(tmp_path: Path) -> None:
    """A plugin file's schema is found in its own folder, with no schemas.path."""
    (tmp_path / "shout.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "shout.json").write_text(SCHEMA)
    registry = build_registry(sources(["shout"], [tmp_path]))
    assert registry.types["shout"].schema.errors({"type": "shout"}) is not None
    assert registry.types["shout"].schema.errors({"type": "shout", "text": "x"}) is None


def test_installed_package_schema_and_name_clash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry-point plugin's schema is found in its own package; a file plugin of the same
    name is refused rather than silently winning."""
    site = tmp_path / "site"
    package = site / "miaws_shout_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (package / "shout.json").write_text(SCHEMA)
    info = site / "miaws_shout_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: miaws-shout-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[miaws]\nshout = miaws_shout_pkg\n")
    monkeypatch.syspath_prepend(str(site))
    registry = build_registry(sources(["shout"], []))
    assert registry.types["shout"].plugin == "shout"
    assert "miaws_shout_pkg" in registry.types["shout"].schema.name
    files = tmp_path / "files"
    files.mkdir()
    (files / "shout.py").write_text(textwrap.dedent(PLUGIN))
    with pytest.raises(ConfigError, match=r"two plugins are named 'shout': .*entry point"):
        build_registry(sources(["shout"], [files]))
