"""Live reconfiguration (SIGHUP or ``POST /api/reload``) without dropping a connection.

The config file is read again and checked as at start-up, with the environment and the
``--host`` / ``--port`` of ``miaws serve`` applied again.  Every new object is built before
anything changes; a file that fails (bad YAML, a wrong value, a value that cannot be applied,
a plugin or schema that does not load or whose ``startup`` raises) is refused with one log
line and the running configuration stays, all of it.  Otherwise the sections that can change
live are applied:

- ``plugins`` / ``schemas``: a new plugin registry replaces the old one; the next message uses
  it (a type whose plugin was switched off answers ``unknown-type``).
- ``limits``: ``max_message_bytes`` (and ``max_queued_bytes`` on ``/ws``) apply to
  connections opened after the reload (Tornado fixes the limit of a connection when it
  opens); the message rate and room limits apply from the next message
  (``max_connections``, ``connection_rate``, ``connection_burst`` and
  ``max_connections_per_ip`` from the next connection; a per-address cap switched on counts
  only the connections opened after it).
- ``logging``, ``api``, ``console``: at once.
- ``rooms``: ``leave_delay`` applies to leaves from now on (a leave pending now keeps its
  delay), ``presence_max_members`` to the next ``presence`` reply, ``join_proxy_url`` (set,
  changed or removed) to the next join.  ``rooms.rules`` needs a restart: a room already
  occupied would otherwise answer ``presence`` without the members that joined before the
  reload, and the brokers keep the history rules they started with.

Every other section (``server``, ``heartbeat``, ``proxy``, sections of other features) keeps
its running value; a change there is reported as needing a restart.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import tornado.web

from miaws.config import ConfigError, Settings, load_settings, sections
from miaws.core.context import JoinGate
from miaws.core.plugins import build_registry
from miaws.core.ratelimit import RateLimiter
from miaws.integration.join_proxy import JoinProxy
from miaws.ops.logs import configure_logging
from miaws.service import Service

__all__ = ["ReloadResult", "reload_config", "LIVE_SECTIONS"]

log = logging.getLogger("miaws")

LIVE_SECTIONS = frozenset({"plugins", "schemas", "limits", "logging", "api", "console", "rooms"})
RESTART_KEYS = frozenset({"rooms.rules"})  # in a live section, but kept until a restart


def is_live(key: str) -> bool:
    """True when a change of the dotted key is applied by a reload."""
    return key.split(".")[0] in LIVE_SECTIONS and key not in RESTART_KEYS


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
    """The configuration as ``miaws serve`` would build it now (file, environment, --host,
    --port)."""
    settings = load_settings(service.config_path)
    server = settings.server
    if service.port_override is not None:
        server = dataclasses.replace(server, port=service.port_override)
    if service.host_override:
        server = dataclasses.replace(server, host=service.host_override)
    return dataclasses.replace(settings, server=server)


def check_limits(source: str, settings: Settings) -> None:
    """ConfigError if the message rate limiter cannot be built from ``limits.*``."""
    try:
        RateLimiter.from_settings(settings.limits)
    except (ArithmeticError, ValueError) as exc:
        raise ConfigError(
            f"{source}: limits.messages_per_second and limits.burst cannot be applied "
            f"({type(exc).__name__}: {exc})"
        ) from None


def join_gate(service: Service, settings: Settings) -> JoinGate | None:
    """The gate for ``rooms.join_proxy_url``: the running one when the URL is unchanged, else
    a new one on the service's pooled backends (a new host gets its session on first use)."""
    url = settings.rooms.join_proxy_url
    if url == service.settings.rooms.join_proxy_url:
        return service.dispatcher.join_gate
    return None if url is None else JoinProxy(service.backends, url, settings.proxy.timeout)


def reload_config(service: Service, app: tornado.web.Application) -> ReloadResult:
    """Re-read the config file and apply what can change live; see the module docstring.

    Every new object is built before anything is swapped: whatever fails (reading the file,
    building the rate limiter, a plugin's ``startup``) refuses the file with nothing changed,
    and the swap itself is plain assignments."""
    source = str(service.config_path or "defaults")
    old = service.settings
    try:
        fresh = read_settings(service)
        changed = changed_keys(old, fresh)
        live = [k for k in changed if is_live(k)]
        # What runs: the live sections of the new file, the rest (and rooms.rules) as it was.
        running = dataclasses.replace(
            fresh,
            **{name: getattr(old, name) for name in sections() if name not in LIVE_SECTIONS},
            rooms=dataclasses.replace(fresh.rooms, rules=old.rooms.rules),
        )
        check_limits(source, running)  # raises here, not in Dispatcher.limits
        gate = join_gate(service, running)
        registry = None
        if any(k.startswith(("plugins.", "schemas.")) for k in live):
            # The types of the proxy plugin come from proxy.*, which needs a restart: the
            # new registry gets the running ones.  Last: its startup hook has side effects.
            registry = build_registry(running.plugin_sources())
            registry.pm.hook.startup(service=service)
    except Exception as exc:  # a ConfigError, a value that cannot be applied, a plugin's startup
        error = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        log.error(
            "config reload refused, running configuration kept: %s",
            error,
            extra={"event": "reload-refused"},
        )
        return ReloadResult(source, error=error)
    # The swap: nothing below raises.
    service.settings = running
    if registry is not None:
        service.dispatcher.registry = registry
    app.settings["websocket_max_message_size"] = running.limits.max_message_bytes
    service.dispatcher.limits = running.limits  # rates and room limits: from the next message
    service.dispatcher.join_gate = gate  # joins from the next one; one in flight keeps its own
    service.presence.configure(
        service.presence.rules,  # rooms.rules needs a restart (see RESTART_KEYS)
        running.rooms.leave_delay,
        running.rooms.presence_max_members,
        service.presence.webhook_events,
    )
    if any(k.startswith("logging.") for k in live):
        configure_logging(running)
    result = ReloadResult(
        source, applied=live, restart_required=[k for k in changed if k not in live]
    )
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
