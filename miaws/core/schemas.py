"""Message schemas: loaded and checked once at start-up, then validated per message.

``jsonschema`` is the authority: it checks each schema file (``check_schema``) and explains a
failure (the best-matching error gives ``details.path``).  The per-message check is
``jsonschema-rs`` (a compiled validator, ~60x cheaper than jsonschema's for our schemas);
only when it says no do we ask ``jsonschema``, whose verdict and details stand.  A schema
jsonschema-rs cannot build, or a message it cannot read (a lone surrogate), goes to
``jsonschema`` alone.  Formats are not asserted and nothing is fetched, as in jsonschema.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
from jsonschema.exceptions import best_match

from miaws.core.errors import QUOTE_LIMIT, ConfigError, clip

__all__ = ["Schema", "load_schema", "find_schema_file"]


class Schema:
    """One compiled message schema."""

    __slots__ = ("name", "document", "_full", "_fast")

    def __init__(self, name: str, document: dict[str, Any]) -> None:
        self.name = name
        self.document = document
        cls = jsonschema.validators.validator_for(document)
        try:
            cls.check_schema(document)
        except jsonschema.SchemaError as exc:
            path = "/".join(str(p) for p in exc.path)
            raise ConfigError(
                f"{name}: not a valid JSON Schema ({exc.message}{' at ' + path if path else ''})"
            ) from None
        self._full = cls(document)
        self._fast: Callable[[Any], bool] | None
        try:
            fast = jsonschema_rs.validator_for(document, validate_formats=False, offline=True)
            self._fast = fast.is_valid
        except Exception:  # e.g. a $ref to a document it cannot fetch: jsonschema only
            self._fast = None

    def errors(self, message: dict[str, Any]) -> dict[str, str] | None:
        """None if message is valid, else ``{"path": "/room", "reason": "..."}``."""
        if self._fast is not None:
            try:
                if self._fast(message):
                    return None
            except Exception:  # a value it cannot read: jsonschema decides
                pass
        error = best_match(self._full.iter_errors(message))
        if error is None:
            return None
        path = "".join(f"/{p}" for p in error.absolute_path)
        quoted = [repr(error.instance)]  # what jsonschema's message may quote of the client's
        if error.validator == "required" and isinstance(error.instance, dict):
            missing = [r for r in error.validator_value if r not in error.instance]
            if missing:
                path += f"/{missing[0]}"
        elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = error.schema.get("properties", {})
            extra = [k for k in error.instance if k not in allowed]
            if extra:
                path += f"/{extra[0]}"
            quoted += [repr(k) for k in extra]
        # jsonschema's message quotes the offending value (``'xx…' is too long``): at most
        # QUOTE_LIMIT characters of it, so the reply stays small whatever the client sent.
        reason = error.message
        for value in quoted:
            if len(value) > QUOTE_LIMIT and value in reason:
                reason = reason.replace(value, clip(value))
        return {"path": clip(path), "reason": clip(reason, 2 * QUOTE_LIMIT)}


def find_schema_file(filename: str, directories: Sequence[Path]) -> Path | None:
    for directory in directories:
        candidate = directory / filename
        if candidate.is_file():
            return candidate
    return None


def load_schema(
    type_name: str, spec: str | dict[str, Any] | None, directories: Sequence[Path]
) -> Schema:
    """Compile the schema of one message type; ConfigError names the file on any problem."""
    if isinstance(spec, dict):
        return Schema(f"inline schema of {type_name!r}", spec)
    filename = spec or f"{type_name}.json"
    path = find_schema_file(filename, directories)
    if path is None:
        where = ", ".join(str(d) for d in directories)
        raise ConfigError(
            f"schemas: no schema file {filename} for message type {type_name!r} (looked in {where})"
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: not a valid JSON Schema (the document must be an object)")
    return Schema(str(path), document)
