"""Live reconfiguration (SIGHUP or ``POST /api/reload``) without dropping a connection.

The config file is read again and checked as at start-up.  A file that fails (bad YAML, a
wrong value, a plugin or schema that does not load) is refused with one log line and the
running configuration stays.  Otherwise the sections that can change live are applied:

- ``plugins`` / ``schemas``: a new plugin registry replaces the old one; the next message uses
  it (a type whose plugin was switched off answers ``unknown-type``).
- ``limits``: ``max_message_bytes`` applies to connections opened after the reload (Tornado
  fixes the limit of a connection when it opens); the message rate and room limits apply
  from the next message (``max_connections``, ``connection_rate``, ``connection_burst`` and
  ``max_connections_per_ip`` from the next connection; a per-address cap switched on counts
  only the connections opened after it).
- ``logging``, ``api``, ``console``: at once.
- ``rooms``: the ``presence`` and ``join_leave`` of ``rooms.rules``, ``rooms.leave_delay`` and
  ``rooms.presence_max_members`` apply to rooms from their next join (a leave pending now
  keeps its delay); the ``history`` of a rule keeps its running value (needs a restart).

Every other section (``server``, ``heartbeat``, sections of other features) keeps its running
value; a change there is reported as needing a restart.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import tornado.web

from miaws.config import ConfigError, Settings, load_settings, sections
from miaws.core.plugins import build_registry
from miaws.core.presence import RoomRules
from miaws.ops.logs import configure_logging
from miaws.service import Service

__all__ = ["ReloadResult", "reload_config", "LIVE_SECTIONS"]

log = logging.getLogger("miaws")

LIVE_SECTIONS = frozenset({"plugins", "schemas", "limits", "logging", "api", "console", "rooms"})


@dataclass
class ReloadResult:
    """What a reload did: keys applied, keys that need a restart, or why it was refused."""

    source: str
    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "refused" if self.error else "reloaded",
            "source": self.source,
            "applied": self.applied,
            "restartRequired": self.restart_required,
        }
        if self.error:
            body["error"] = self.error
        return body


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted keys whose values differ."""
    keys = []
    for name in sections():
        before, after = getattr(old, name), getattr(new, name)
        for f in dataclasses.fields(before):
            if getattr(before, f.name) != getattr(after, f.name):
                keys.append(f"{name}.{f.name}")
    return keys


def read_settings(service: Service) -> Settings:
    """The configuration as ``miaws serve`` would build it now (file, environment, --port)."""
    settings = load_settings(service.config_path)
    if service.port_override is not None:
        settings = dataclasses.replace(
            settings, server=dataclasses.replace(settings.server, port=service.port_override)
        )
    return settings


def reload_config(service: Service, app: tornado.web.Application) -> ReloadResult:
    """Re-read the config file and apply what can change live; see the module docstring."""
    source = str(service.config_path or "defaults")
    try:
        fresh = read_settings(service)
        changed = changed_keys(service.settings, fresh)
        live = {k for k in changed if k.split(".")[0] in LIVE_SECTIONS}
        registry = None
        if any(k.startswith(("plugins.", "schemas.")) for k in live):
            # The types of the proxy plugin come from proxy.*, which needs a restart: the
            # new registry gets the running ones.
            kept_proxy = dataclasses.replace(fresh, proxy=service.settings.proxy)
            registry = build_registry(kept_proxy.plugin_sources())
            registry.pm.hook.startup(service=service)
    except Exception as exc:  # a ConfigError, or a plugin failing in its startup hook
        error = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        log.error(
            "config reload refused, running configuration kept: %s",
            error,
            extra={"event": "reload-refused"},
        )
        return ReloadResult(source, error=error)
    history_changed = fresh.history_rules() != service.settings.history_rules()
    kept = {name: getattr(service.settings, name) for name in sections()}
    applied = {name: getattr(fresh, name) for name in LIVE_SECTIONS}
    service.settings = dataclasses.replace(fresh, **{**kept, **applied})
    if registry is not None:
        service.dispatcher.registry = registry
    app.settings["websocket_max_message_size"] = fresh.limits.max_message_bytes
    service.dispatcher.limits = fresh.limits  # rates and room limits: from the next message
    rooms = fresh.rooms
    service.presence.configure(
        RoomRules(rooms.rules),
        rooms.leave_delay,
        rooms.presence_max_members,
        service.presence.webhook_events,
    )
    if any(k.startswith("logging.") for k in live):
        configure_logging(service.settings)
    result = ReloadResult(
        source,
        applied=[k for k in changed if k in live],
        restart_required=[k for k in changed if k not in live],
    )
    if (
        history_changed and "history.rooms" not in changed
    ):  # the brokers keep the history rules they started with
        result.restart_required.append("rooms.rules (history)")
    log.info(
        "config reloaded from %s: applied [%s]; needs a restart: [%s]",
        source,
        ", ".join(result.applied),
        ", ".join(result.restart_required),
        extra={
            "event": "reload",
            "applied": result.applied,
            "restartRequired": result.restart_required,
        },
    )
    return result
