"""The per-message schema check gives jsonschema's verdict, for every bundled schema.

``Schema.errors`` asks a compiled validator (jsonschema-rs) first and jsonschema only when it
says no; these tests check that what it accepts is exactly what jsonschema accepts.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miaws.core.plugins import bundled_schemas_dir
from miaws.core.schemas import Schema, load_schema

SCHEMA_FILES = sorted(bundled_schemas_dir().glob("*.json"))
NAMES = [path.stem for path in SCHEMA_FILES]

# Strings near the room-name rule (length 0-66, an optional trailing newline) and any text.
strings = st.text(max_size=70) | st.from_regex(r"[A-Za-z0-9_.:-]{0,66}\n?", fullmatch=True)
keys = st.sampled_from(["epoch", "seq", "x"]) | st.text(max_size=4)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | strings,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)


def messages(name: str) -> st.SearchStrategy[Any]:
    """Objects shaped like messages of type name: its properties with any JSON values."""
    document = json.loads((bundled_schemas_dir() / f"{name}.json").read_text())
    keys = [*document.get("properties", {}), "extra"]
    fields = st.dictionaries(st.sampled_from(keys), json_values, max_size=len(keys))
    kinds = st.just(name) | strings
    return st.builds(lambda kind, rest: {"type": kind, **rest}, kinds, fields) | json_values


def schema_and_reference(name: str) -> tuple[Schema, jsonschema.protocols.Validator]:
    schema = load_schema(name, None, [bundled_schemas_dir()])
    return schema, jsonschema.validators.validator_for(schema.document)(schema.document)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_verdict_is_jsonschemas(name: str, data: st.DataObject) -> None:
    schema, reference = schema_and_reference(name)
    message = data.draw(messages(name))
    assert (schema.errors(message) is None) == reference.is_valid(message)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "join-room", "room": "lobby\n"},  # $ allows a trailing newline in jsonschema
        {"type": "join-room", "room": "\ud800"},  # a lone surrogate: not readable as UTF-8
        {"type": "join-room", "room": "lobby", "since": {"epoch": "e", "seq": 10**30}},
        {"type": "join-room", "room": "lobby", "since": {"epoch": "e", "seq": 2.0}},
    ],
)
def test_edge_values_get_jsonschemas_verdict(message: dict[str, Any]) -> None:
    schema, reference = schema_and_reference("join-room")
    assert (schema.errors(message) is None) == reference.is_valid(message)


def test_a_refused_message_names_the_path() -> None:
    schema, _ = schema_and_reference("join-room")
    details = schema.errors({"type": "join-room", "room": "no spaces"})
    assert details is not None and details["path"] == "/room"
