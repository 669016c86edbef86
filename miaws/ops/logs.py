"""Logging set-up: ``logging.format: text`` (readable lines) or ``json`` (one object a line).

A JSON line always has ``time``, ``level``, ``logger``, ``event`` and ``message``; fields a
log call passes with ``extra=`` (``clientId``, ``code``, ``reason``, ``duration``, ...) are
added as they are.  :func:`configure_logging` can run again (config reload): it replaces its
own handler's formatter and the level, and leaves other handlers alone.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any

from miaws.config import Settings

__all__ = ["JSONFormatter", "TextFormatter", "configure_logging", "set_worker", "TEXT_FORMAT"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_worker: int | None = None  # this process's index under ``miaws serve --workers``


def set_worker(index: int) -> None:
    """Mark every line of this process as worker ``index``'s: ``miaws[w2]`` in text,
    ``"worker": 2`` in JSON."""
    global _worker
    _worker = index


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, formatting the date and time of day once a second, not per line, and
    a record without exception or stack in one f-string (logging's own lines, tested)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info or self._fmt != TEXT_FORMAT:
            return super().format(record)
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        name = record.name if _worker is None else f"{record.name}[w{_worker}]"
        return f"{record.asctime} {record.levelname} {name}: {record.message}"

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            local = self.converter(second)
            self._second, self._stamp = second, time.strftime(self.default_time_format, local)
        return f"{self._stamp},{int(record.msecs):03d}"


class JSONFormatter(logging.Formatter):
    """One JSON object per record, with the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        if _worker is not None:
            entry["worker"] = _worker
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _MiawsHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs (recognised again on reload)."""


def configure_logging(settings: Settings) -> None:
    """Set the level and format of the process's logging from settings."""
    level = getattr(logging, settings.logging.level.upper())
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _MiawsHandler)), None)
    if handler is None:
        for old in list(root.handlers):  # what basicConfig(force=True) would drop
            if type(old) is logging.StreamHandler:
                root.removeHandler(old)
        handler = _MiawsHandler(sys.stderr)
        root.addHandler(handler)
    formatter: logging.Formatter = (
        JSONFormatter() if settings.logging.format == "json" else TextFormatter(TEXT_FORMAT)
    )
    handler.setFormatter(formatter)
    root.setLevel(level)
    # No format here shows the caller's file and line, thread or process, so the logging
    # module need not look them up for every record (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # One line per HTTP request (and per WebSocket upgrade) is noise below debug.
    logging.getLogger("tornado.access").setLevel(max(level, logging.WARNING))
