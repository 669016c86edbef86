"""Meta-tests that keep docs, schemas and tests honest."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import miaws
from miaws.config import build_settings, settings_table
from miaws.core import hookspecs
from miaws.core.errors import ERROR_CODES
from miaws.core.plugins import build_registry

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented() -> None:
    """docs/configuration.md has a '### key' heading for every setting."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [key for key, *_ in settings_table() if f"### {key}\n" not in doc]
    assert missing == []


def test_every_setting_is_in_the_shipped_config() -> None:
    """config.yaml mentions every setting."""
    shipped = (ROOT / "config.yaml").read_text()
    for key, *_ in settings_table():
        section, name = key.split(".")
        assert re.search(rf"^{section}:", shipped, re.M), section
        assert re.search(rf"^\s+{name}:", shipped, re.M), key


def test_every_hook_is_documented_with_its_signature() -> None:
    """docs/plugins.md has a '### name(args)' heading for every hookspec."""
    doc = (ROOT / "docs" / "plugins.md").read_text()
    specs = [f for n, f in vars(hookspecs).items() if hasattr(f, "miaws_spec")]
    assert specs
    for spec in specs:
        args = ", ".join(inspect.signature(spec).parameters)
        assert f"### {spec.__name__}({args})\n" in doc, spec.__name__


def test_every_hook_has_a_test() -> None:
    """Each hook has a test_hook_<name> somewhere in tests/."""
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for name, fn in vars(hookspecs).items():
        if hasattr(fn, "miaws_spec"):
            assert f"def test_hook_{name}(" in tests, name


def test_schemas_and_types_match() -> None:
    """Every built-in type has a schema file and every schema file belongs to a type."""
    registry = build_registry(build_settings({}, environ={}).plugin_sources())
    files = {p.stem for p in (ROOT / "schemas").glob("*.json")}
    assert files == set(registry.types)
    for path in (ROOT / "schemas").glob("*.json"):
        assert json.loads(path.read_text())["properties"]["type"] == {"const": path.stem}


def test_every_error_code_is_tested() -> None:
    """Each wire error code appears in errors.py and in at least one test."""
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for code in ERROR_CODES:
        assert f'"{code}"' in tests, code


def test_exports() -> None:
    """The public names are importable from miaws."""
    for name in miaws.__all__:
        assert hasattr(miaws, name), name
