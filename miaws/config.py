"""Settings: one table of every key with its default, its help and its environment override.

Precedence is fixed: environment > config file > default.  A file may set only some keys.
Every problem is a :class:`ConfigError` whose text names the file, the dotted key, the value
and what was expected, e.g. ``config.yaml: heartbeat.timeout has value 'x'; expected a
number of seconds``.  ``docs/configuration.md`` documents every key (a test checks it).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import yaml

from miaws.core.errors import ConfigError
from miaws.core.history import HistoryRoom
from miaws.core.presence import RoomRule, RoomRules

if TYPE_CHECKING:
    from miaws.core.plugins import PluginSources

__all__ = [
    "Settings",
    "ConfigError",
    "ProxyType",
    "load_settings",
    "settings_table",
    "check_workers",
    "BUILTIN_PLUGINS",
]

BUILTIN_PLUGINS = ("ping", "echo", "broadcast", "rooms", "presence")


def setting(default: Any, help: str, *, env: str | None = None, expect: str | None = None) -> Any:
    """Declare one setting: default, one-line help, optional env override and expectation text."""
    meta = {"help": help, "env": env, "expect": expect}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ServerSettings:
    host: str = setting("0.0.0.0", "Address to listen on.")
    port: int = setting(
        3001,
        "TCP port for HTTP, WebSocket and Socket.IO.",
        env="PORT",
        expect="a port number from 1 to 65535",
    )
    ws_path: str = setting(
        "/ws", "URL path of the native WebSocket endpoint.", expect="a URL path starting with '/'"
    )
    header_timeout: float = setting(
        10.0,
        "Seconds a new connection has to send its complete request head; later: closed.",
        expect="a positive number of seconds",
    )
    idle_timeout: float = setting(
        75.0,
        "Seconds an HTTP keep-alive connection may wait for its next request head; later: closed.",
        expect="a positive number of seconds",
    )
    body_timeout: float = setting(
        30.0,
        "Seconds an HTTP request has, after its head, to send its whole body; later: closed.",
        expect="a positive number of seconds",
    )
    workers: int = setting(
        1,
        "Processes serving server.port together (SO_REUSEPORT), each a node of the cluster; "
        "above 1 needs broker.type redis or redis-cluster.",
        expect="a whole number of processes, at least 1",
    )


@dataclass(frozen=True)
class HeartbeatSettings:
    interval: float = setting(
        30.0,
        "Seconds between WebSocket pings; 0 switches it off.",
        expect="a number of seconds",
    )
    timeout: float = setting(
        30.0,
        "Seconds to wait for the pong before the client is dead; at most the interval.",
        expect="a number of seconds",
    )


@dataclass(frozen=True)
class LimitsSettings:
    max_message_bytes: int = setting(
        65536,
        "Largest accepted frame in bytes; larger: close 1009.",
        expect="a positive whole number of bytes",
    )
    messages_per_second: float = setting(
        0.0,
        "Messages a client may send per second (token bucket); over it: error rate-limited. "
        "0: no limit.",
        expect="a number of messages per second, 0 for no limit",
    )
    burst: int = setting(
        0,
        "Messages a client may send at once above the rate (bucket size); 0: one second's worth.",
        expect="a whole number of messages, 0 for one second's worth",
    )
    flood_close_after: int = setting(
        100,
        "Close 1008 once a client's rate-limited messages outnumber its accepted ones by "
        "this many; 0: never close.",
        expect="a whole number of messages, 0 to never close",
    )
    max_connections: int = setting(
        0,
        "Connections this process accepts; one more is closed with 1013. 0: the descriptor limit "
        "less 10% and 32.",
        expect="a whole number of connections, 0 for one derived from the descriptor limit",
    )
    connection_rate: float = setting(
        0.0,
        "New connections this process accepts per second (token bucket, both transports); "
        "over it: HTTP 503 with Retry-After before the upgrade. 0: no limit.",
        expect="a number of connections per second, 0 for no limit",
    )
    connection_burst: int = setting(
        0,
        "New connections accepted at once above limits.connection_rate (bucket size); "
        "0: one second's worth.",
        expect="a whole number of connections, 0 for one second's worth",
    )
    max_connections_per_ip: int = setting(
        0,
        "Connections one client address may hold open (both transports); one more: HTTP 429 "
        "before the upgrade. Behind a proxy the address is the proxy's. 0: no limit.",
        expect="a whole number of connections, 0 for no limit",
    )
    max_rooms_per_client: int = setting(
        1000,
        "Rooms one client may be in at once; joining one more: error forbidden. 0: no limit.",
        expect="a whole number of rooms, 0 for no limit",
    )
    max_room_members: int = setting(
        0,
        "Members a room may have; joining a full room: error forbidden. 0: no limit.",
        expect="a whole number of members, 0 for no limit",
    )
    max_queued_bytes: int = setting(
        1048576,
        "Bytes that may wait to be sent to one client; over it the client is closed "
        "with 1013 (slow consumer). 0: no limit.",
        expect="a whole number of bytes, 0 for no limit",
    )


@dataclass(frozen=True)
class AuthSettings:
    mode: Literal["none", "jwt", "token", "proxy"] = setting(
        "none",
        "How clients authenticate: none, jwt, token, or proxy (a backend decides; auth.proxy_url).",
        expect="one of none, jwt, token, proxy",
    )
    jwt_secret: str | None = setting(
        None,
        "Shared secret for HS256 JWTs.",
        env="MIAWS_JWT_SECRET",
        expect="a string",
    )
    jwt_public_key: str | None = setting(
        None,
        "RS256 public key: PEM text or the path of a PEM file.",
        env="MIAWS_JWT_PUBLIC_KEY",
        expect="PEM text or a file path",
    )
    jwt_audience: str | None = setting(
        None, "Required 'aud' claim of JWTs; none: not checked.", expect="a string"
    )
    jwt_issuer: str | None = setting(
        None, "Required 'iss' claim of JWTs; none: not checked.", expect="a string"
    )
    rooms_claim: str = setting(
        "rooms",
        "JWT claim listing the rooms the client may join; absent claim: any room.",
        expect="a claim name",
    )
    tokens: dict[str, Any] = setting(
        {},
        "Static tokens (mode token): token -> user name, or -> {user, rooms}.",
        expect="a mapping of token to user name or to {user, rooms}",
    )
    late_timeout: float = setting(
        0.0,
        "Seconds a connection without a token may stay open waiting for its "
        '{"type":"auth"} first message; 0: the token must come with the upgrade.',
        expect="a number of seconds",
    )
    proxy_url: str | None = setting(
        None,
        "mode proxy: URL the upgrade's chosen headers are POSTed to; the backend answers "
        "{user, rooms, info} (2xx) or refuses (401/403).",
        expect="an http:// or https:// URL",
    )
    proxy_headers: list[str] = setting(
        ["cookie", "authorization"],
        "mode proxy: the upgrade request headers sent to auth.proxy_url.",
        expect="a list of header names",
    )
    proxy_cache_seconds: float = setting(
        0.0,
        "mode proxy: seconds an answer is reused for the same headers and query; 0: never.",
        expect="a number of seconds, 0 for no cache",
    )


@dataclass(frozen=True)
class SecuritySettings:
    allowed_origins: list[str] = setting(
        [],
        "Origins browsers may connect from (https://app.example.com, https://*.example.com, *); "
        "empty: any.",
        expect="a list of origins",
    )


@dataclass(frozen=True)
class PluginsSettings:
    enabled: list[str] = setting(
        list(BUILTIN_PLUGINS),
        "Plugin names to enable; all others are blocked.",
        expect="a list of plugin names",
    )
    paths: list[str] = setting(
        [], "Extra directories whose *.py files are plugins.", expect="a list of directory paths"
    )


@dataclass(frozen=True)
class SchemasSettings:
    path: str | None = setting(
        None,
        "Directory searched first for <type>.json schema files; "
        "the bundled schemas are the fallback.",
        expect="a directory path",
    )


@dataclass(frozen=True)
class LoggingSettings:
    level: Literal["debug", "info", "warning", "error"] = setting(
        "info", "Log level.", expect="one of debug, info, warning, error"
    )
    format: Literal["text", "json"] = setting(
        "text",
        "text: one readable line per event; json: one JSON object per line.",
        expect="one of text, json",
    )


@dataclass(frozen=True)
class ApiSettings:
    keys: list[str] = setting(
        [],
        "Bearer keys for /api/*; empty (and no MIAWS_API_KEY): the API is open.",
        expect="a list of non-empty strings",
    )
    idempotency_window: float = setting(
        300.0,
        "Seconds a POST /api/publish Idempotency-Key is remembered: a repeat delivers nothing "
        "and gets the first answer.",
        expect="a positive number of seconds",
    )


@dataclass(frozen=True)
class ConsoleSettings:
    enabled: bool = setting(True, "Serve the web console at /.", expect="true or false")


@dataclass(frozen=True)
class BrokerSettings:
    type: Literal["memory", "redis", "redis-cluster"] = setting(
        "memory",
        "memory: one process; redis: several nodes sharing broadcasts through Redis pub/sub; "
        "redis-cluster: the same on a Redis Cluster (sharded pub/sub, Redis 7+).",
        expect="one of memory, redis, redis-cluster",
    )
    url: str = setting(
        "redis://127.0.0.1:6379/0",
        "Redis URL (redis://, rediss:// or unix://) when broker.type is redis; with "
        "redis-cluster, any one node of the cluster (redis:// or rediss://).",
        env="REDIS_URL",
        expect="a redis://, rediss:// or unix:// URL",
    )
    channel_prefix: str = setting(
        "miaws",
        "Prefix of the pub/sub channel and node keys; nodes with the same prefix form a cluster.",
        expect="1 to 64 characters of [A-Za-z0-9_.:-]",
    )
    heartbeat: float = setting(
        5.0,
        "Seconds between a node's count updates in Redis; a node silent for 3 is gone.",
        expect="a positive number of seconds",
    )
    partitions: int = setting(
        1024,
        "Partitions rooms hash into; a node subscribes to one channel per partition it has a "
        "room of. The same on every node.",
        expect="an integer from 1 to 16384",
    )
    probe_interval: float = setting(
        2.0,
        "Seconds between probes of a node's subscription; a lost one is found within two.",
        expect="a positive number of seconds",
    )
    unsubscribe_delay: float = setting(
        5.0,
        "Seconds a node stays subscribed to a partition after its last local room there empties.",
        expect="a number of seconds, 0 or more",
    )


@dataclass(frozen=True)
class SocketIOSettings:
    enabled: bool = setting(True, "Serve Socket.IO at /socket.io/ on the server's port.")
    cors_allowed_origins: str | list[str] = setting(
        "*",
        "Origins allowed to connect to Socket.IO: '*' for any, or a list of origins.",
        expect="'*' or a list of origins such as https://app.example.com",
    )
    namespaces: list[str] = setting(
        ["/"],
        "Socket.IO namespaces clients may connect to; each has its own rooms.",
        expect="a non-empty list of namespaces starting with '/'",
    )


@dataclass(frozen=True)
class HistorySettings:
    rooms: list[HistoryRoom] = setting(
        [],
        "Rooms that keep a history for recovery: a list of {match: GLOB, size: N, ttl: SECONDS}; "
        "the first matching rule applies.",
        expect="a list of {match: GLOB, size: N, ttl: SECONDS} mappings",
    )


@dataclass(frozen=True)
class ProxyType:
    """One entry of ``proxy.types``: a message type answered by an HTTP backend."""

    type: str
    url: str
    schema: str | None = None  # a schema file name; None: any object
    timeout: float | None = None  # None: proxy.timeout
    forward_headers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ProxySettings:
    types: list[ProxyType] = setting(
        [],
        "Message types answered by an HTTP backend (plugin proxy): a list of {type, url, "
        "schema?, timeout?, forward_headers?}.",
        expect="a list of {type, url, schema?, timeout?, forward_headers?} mappings",
    )
    timeout: float = setting(
        5.0,
        "Seconds a backend call may take (proxied types without their own, auth.proxy_url, "
        "rooms.join_proxy_url); later: error backend-timeout.",
        expect="a positive number of seconds",
    )
    max_concurrent: int = setting(
        64,
        "Calls in flight to one backend (scheme, host and port) at once; more wait their turn "
        "within their timeout.",
        expect="a whole number of calls, at least 1",
    )
    breaker_failures: int = setting(
        5,
        "Consecutive failures (5xx, timeout, unreachable) that open a backend's circuit: "
        "calls then fail at once; 0: never open.",
        expect="a whole number of failures, 0 for no circuit breaker",
    )
    breaker_seconds: float = setting(
        10.0,
        "Seconds an open circuit fails calls at once before one probe call is let through.",
        expect="a positive number of seconds",
    )


@dataclass(frozen=True)
class RoomsSettings:
    leave_delay: float = setting(
        5.0,
        "Seconds a member may be gone before it counts as having left (member-left, "
        "room-vacated); a return within them causes no event.",
        expect="a number of seconds, 0 or more",
    )
    rules: list[RoomRule] = setting(
        [],
        "Per-room behaviour, first matching glob wins: a list of {match: GLOB, presence: BOOL, "
        "join_leave: BOOL, history: {size: N, ttl: SECONDS}}.",
        expect="a list of {match, presence, join_leave, history: {size, ttl}} mappings",
    )
    presence_max_members: int = setting(
        100,
        "Members a presence reply lists at most (count still counts them all); 0: no cap.",
        expect="a whole number of members, 0 for no cap",
    )
    join_proxy_url: str | None = setting(
        None,
        "URL asked before each join (POST with the client's identity and the room): 2xx "
        "allows, 403 refuses (error forbidden); none: no backend is asked.",
        expect="an http:// or https:// URL",
    )


WEBHOOK_EVENTS = (
    "room-occupied",
    "room-vacated",
    "member-added",
    "member-removed",
    "client-connected",
    "client-disconnected",
)


@dataclass(frozen=True)
class WebhookEndpoint:
    """One entry of ``webhooks.endpoints`` (or of the ``webhooks:`` list)."""

    url: str
    secret: str | None = None
    secret_env: str | None = None  # the name of the variable holding the secret
    events: list[str] = field(default_factory=lambda: list(WEBHOOK_EVENTS))


@dataclass(frozen=True)
class WebhooksSettings:
    endpoints: list[WebhookEndpoint] = setting(
        [],
        "Where lifecycle events are POSTed, signed: a list of {url, secret or secret_env, "
        "events}. 'webhooks:' may hold this list directly.",
        expect="a list of {url, secret or secret_env, events} mappings",
    )
    retry_for: float = setting(
        300.0,
        "Seconds a batch is retried (exponential back-off) after a failed POST; then dropped.",
        expect="a positive number of seconds",
    )
    timeout: float = setting(
        5.0, "Seconds one POST may take before it counts as failed.", expect="a positive number"
    )
    queue_size: int = setting(
        10000,
        "Events waiting per endpoint; beyond it new events are dropped (counted, logged).",
        expect="a positive whole number of events",
    )
    batch_max: int = setting(
        100, "Events at most in one POST.", expect="a positive whole number of events"
    )


@dataclass(frozen=True)
class ShutdownSettings:
    drain_seconds: float = setting(
        0.0,
        "Seconds over which SIGTERM closes the clients with 1001, in even batches; 0: all at once.",
        expect="a number of seconds, 0 for all at once",
    )


@dataclass(frozen=True)
class CompressionSettings:
    enabled: bool = setting(
        False,
        "Offer permessage-deflate (RFC 7692) on the native endpoint and Socket.IO. Off: it costs "
        "CPU per message, and zlib memory per message received compressed.",
        expect="true or false",
    )
    min_size: int = setting(
        1024,
        "Messages shorter than this many bytes are sent uncompressed.",
        expect="a whole number of bytes",
    )
    level: int = setting(
        1,
        "zlib compression level of sent messages: 1 (fastest) to 9 (smallest).",
        expect="a whole number from 1 to 9",
    )


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    plugins: PluginsSettings = field(default_factory=PluginsSettings)
    schemas: SchemasSettings = field(default_factory=SchemasSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    socketio: SocketIOSettings = field(default_factory=SocketIOSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    rooms: RoomsSettings = field(default_factory=RoomsSettings)
    webhooks: WebhooksSettings = field(default_factory=WebhooksSettings)
    shutdown: ShutdownSettings = field(default_factory=ShutdownSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    source: str = field(default="defaults", compare=False)
    """Where the settings came from (file path or 'defaults'), for messages."""

    def plugin_sources(self) -> PluginSources:
        """What the core's plugin loader takes from these settings."""
        from miaws.core.plugins import PluginSources  # pluggy and jsonschema only when used

        return PluginSources(
            self.plugins.enabled, self.plugins.paths, self.schemas.path, self.source, config=self
        )

    def history_rules(self) -> list[HistoryRoom]:
        """What keeps a history: the ``history`` of ``rooms.rules``, then (deprecated, the
        same meaning) ``history.rooms``; first match wins across both.  Empty: none."""
        rules = [*RoomRules(self.rooms.rules).history_rules(), *self.history.rooms]
        return rules if any(r.size > 0 for r in rules) else []


def sections() -> dict[str, type]:
    """Section name -> dataclass of that section."""
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings) if f.name != "source"}


def settings_table() -> list[tuple[str, Any, str, str | None]]:
    """(dotted key, default, help, env) for every setting, for docs and their test."""
    rows = []
    for name, cls in sections().items():
        for f in dataclasses.fields(cls):
            factory: Any = f.default_factory
            default = factory() if f.default is dataclasses.MISSING else f.default
            rows.append((f"{name}.{f.name}", default, f.metadata["help"], f.metadata["env"]))
    return rows


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return "a list"
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _coerce(tp: Any, value: Any) -> Any:
    """Return value as type tp, or raise ValueError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ValueError
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is not type(None):
                try:
                    return _coerce(arg, value)
                except ValueError:
                    pass
        raise ValueError
    if origin is list:
        if not isinstance(value, list):
            raise ValueError
        (item,) = typing.get_args(tp)
        return [_coerce(item, v) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # YAML's .inf and .nan: no setting means either
            raise ValueError
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 2**53:  # beyond a double: no count or size means it, and rates overflow
            raise ValueError
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        if not set(value) <= set(hints):
            raise ValueError
        built: Any = tp
        return built(**{k: _coerce(hints[k], v) for k, v in value.items()})
    raise ValueError


def _build_section(source: str, name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: {name} has value {values!r}; expected a mapping of settings")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"{source}: {name}.{key} is not a known setting (known: {', '.join(known)})"
            )
        try:
            kwargs[key] = _coerce(hints[key], value)
        except (ValueError, TypeError):
            where = _where_wrong(hints[key], value, f"{name}.{key}")
            if where is not None:
                raise ConfigError(f"{source}: {where}") from None
            expect = known[key].metadata["expect"] or _describe(hints[key])
            raise ConfigError(
                f"{source}: {name}.{key} has value {value!r}; expected {expect}"
            ) from None
    return cls(**kwargs)


def _where_wrong(tp: Any, value: Any, path: str) -> str | None:
    """For a list of mappings (``rooms.rules``, ``webhooks.endpoints``, ``proxy.types``)
    that _coerce refused: which entry and field is wrong, and why; None when the list itself
    is (then the whole setting is named)."""
    if typing.get_origin(tp) is not list or not isinstance(value, list):
        return None
    (item,) = typing.get_args(tp)
    if not dataclasses.is_dataclass(item):
        return None
    for i, entry in enumerate(value):
        wrong = _entry_wrong(item, entry, f"{path}[{i}]")
        if wrong is not None:
            return wrong
    return None


def _entry_wrong(cls: Any, entry: Any, here: str) -> str | None:
    """What is wrong with one mapping of dataclass cls at here, naming the field (nested
    mappings such as a rule's ``history`` are looked into); None when it builds."""
    if not isinstance(entry, dict):
        return f"{here} has value {entry!r}; expected a mapping"
    hints = typing.get_type_hints(cls)
    for key, field_value in entry.items():
        if key not in hints:
            return f"{here}.{key} is not a known setting (known: {', '.join(hints)})"
        try:
            _coerce(hints[key], field_value)
        except (ValueError, TypeError):
            inner = hints[key]
            if typing.get_origin(inner) in (Union, types.UnionType):  # X | None
                inner = next(a for a in typing.get_args(inner) if a is not type(None))
            if dataclasses.is_dataclass(inner) and isinstance(field_value, dict):
                deeper = _entry_wrong(inner, field_value, f"{here}.{key}")
                if deeper is not None:
                    return deeper
            return f"{here}.{key} has value {field_value!r}; expected {_describe(inner)}"
    try:
        _coerce(cls, entry)
    except (ValueError, TypeError):  # a field it needs is missing
        needed = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in entry
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        return f"{here} has value {entry!r}; expected the fields {', '.join(needed)}"
    return None


def _apply_env(source_env: Mapping[str, str], data: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Put the settings the environment gives into data; {"section.key": VARIABLE} of them."""
    applied: dict[str, str] = {}
    for name, cls in sections().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            env = f.metadata.get("env")
            if env and source_env.get(env, "") != "":
                raw = source_env[env]
                try:
                    tp = hints[f.name]
                    as_text = tp is str or str in typing.get_args(tp)  # secrets stay text
                    value: Any = raw if as_text else yaml.safe_load(raw)
                    _coerce(hints[f.name], value)
                except (ValueError, TypeError, yaml.YAMLError):
                    expect = f.metadata["expect"] or _describe(hints[f.name])
                    raise ConfigError(
                        f"environment: {env} (for {name}.{f.name}) has value "
                        f"{raw!r}; expected {expect}"
                    ) from None
                data.setdefault(name, {})[f.name] = value
                applied[f"{name}.{f.name}"] = env
    return applied


def _validate(s: Settings) -> None:
    src = s.source
    if not 1 <= s.server.port <= 65535:
        raise ConfigError(
            f"{src}: server.port has value {s.server.port}; expected a port number from 1 to 65535"
        )
    if not s.server.ws_path.startswith("/"):
        raise ConfigError(
            f"{src}: server.ws_path has value {s.server.ws_path!r}; expected a URL "
            "path starting with '/'"
        )
    check_workers(s, "server.workers", s.server.workers)
    for key in ("header_timeout", "idle_timeout", "body_timeout"):
        value = getattr(s.server, key)
        if not value > 0:
            raise ConfigError(
                f"{src}: server.{key} has value {value:g}; expected a positive number of seconds"
            )
    if s.shutdown.drain_seconds < 0:
        raise ConfigError(
            f"{src}: shutdown.drain_seconds has value {s.shutdown.drain_seconds:g}; expected a "
            "number of seconds, 0 for all at once"
        )
    hb = s.heartbeat
    if hb.interval < 0 or hb.timeout < 0:
        raise ConfigError(f"{src}: heartbeat.interval and heartbeat.timeout must not be negative")
    if hb.interval > 0 and hb.timeout > hb.interval:
        raise ConfigError(
            f"{src}: heartbeat.timeout has value {hb.timeout:g}; expected at most "
            f"heartbeat.interval ({hb.interval:g}), as Tornado requires"
        )
    namespaces = s.socketio.namespaces
    if not namespaces or not all(ns.startswith("/") for ns in namespaces):
        raise ConfigError(
            f"{src}: socketio.namespaces has value {namespaces!r}; expected a non-empty list "
            "of namespaces starting with '/'"
        )
    for i, rule in enumerate(s.history.rooms):
        if not rule.match or rule.size < 1 or rule.ttl <= 0:
            raise ConfigError(
                f"{src}: history.rooms[{i}] has value {dataclasses.asdict(rule)!r}; expected a "
                "non-empty match glob, a size of at least 1 and a ttl above 0 seconds"
            )
    if s.limits.max_message_bytes < 1:
        raise ConfigError(
            f"{src}: limits.max_message_bytes has value {s.limits.max_message_bytes};"
            " expected a positive whole number of bytes"
        )
    _validate_broker(src, s.broker)
    _validate_rooms(src, s.rooms)
    _validate_webhooks(src, s.webhooks)
    _validate_limits(src, s)
    if any(not key.strip() for key in s.api.keys):
        raise ConfigError(f"{src}: api.keys has an empty key; expected a list of non-empty strings")
    if not s.api.idempotency_window > 0:
        raise ConfigError(
            f"{src}: api.idempotency_window has value {s.api.idempotency_window:g}; expected a "
            "positive number of seconds"
        )
    _validate_backends(src, s)
    _validate_compression(src, s.compression)
    _validate_presence_broker(src, s)


_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _http_url(value: str | None) -> bool:
    return value is not None and re.fullmatch(r"https?://[^\s/?#]+(?:[/?#]\S*)?", value) is not None


def _validate_backends(src: str, s: Settings) -> None:
    """``auth.proxy_*``, ``rooms.join_proxy_url`` and ``proxy.*``: the HTTP backends."""
    url_expect = "expected an http:// or https:// URL"
    if s.auth.mode == "proxy" and not _http_url(s.auth.proxy_url):
        raise ConfigError(
            f"{src}: auth.proxy_url has value {s.auth.proxy_url!r}; {url_expect} "
            "(auth.mode is proxy)"
        )
    if s.auth.proxy_url is not None and not _http_url(s.auth.proxy_url):
        raise ConfigError(f"{src}: auth.proxy_url has value {s.auth.proxy_url!r}; {url_expect}")
    for name in s.auth.proxy_headers:
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(
                f"{src}: auth.proxy_headers has value {name!r}; expected a list of header names"
            )
    if s.auth.proxy_cache_seconds < 0:
        raise ConfigError(
            f"{src}: auth.proxy_cache_seconds has value {s.auth.proxy_cache_seconds:g}; "
            "expected a number of seconds, 0 for no cache"
        )
    if s.rooms.join_proxy_url is not None and not _http_url(s.rooms.join_proxy_url):
        raise ConfigError(
            f"{src}: rooms.join_proxy_url has value {s.rooms.join_proxy_url!r}; {url_expect}"
        )
    p = s.proxy
    hb = s.heartbeat
    if s.rooms.join_proxy_url is not None and hb.interval > 0 and p.timeout >= hb.timeout:
        raise ConfigError(
            f"{src}: proxy.timeout is {p.timeout:g} s; expected less than heartbeat.timeout "
            f"({hb.timeout:g} s) with rooms.join_proxy_url: a connection waiting for its "
            "backend reads no pong"
        )
    if not p.timeout > 0:
        raise ConfigError(
            f"{src}: proxy.timeout has value {p.timeout:g}; expected a positive number of seconds"
        )
    if p.max_concurrent < 1:
        raise ConfigError(
            f"{src}: proxy.max_concurrent has value {p.max_concurrent}; expected a whole number "
            "of calls, at least 1"
        )
    if p.breaker_failures < 0:
        raise ConfigError(
            f"{src}: proxy.breaker_failures has value {p.breaker_failures}; expected a whole "
            "number of failures, 0 for no circuit breaker"
        )
    if not p.breaker_seconds > 0:
        raise ConfigError(
            f"{src}: proxy.breaker_seconds has value {p.breaker_seconds:g}; expected a positive "
            "number of seconds"
        )
    seen: set[str] = set()
    for i, t in enumerate(p.types):
        where = f"{src}: proxy.types[{i}]"
        if not t.type or t.type in seen:
            raise ConfigError(f"{where}.type has value {t.type!r}; expected a type name used once")
        seen.add(t.type)
        if not _http_url(t.url):
            raise ConfigError(f"{where}.url has value {t.url!r}; {url_expect}")
        if t.timeout is not None and not t.timeout > 0:
            raise ConfigError(
                f"{where}.timeout has value {t.timeout:g}; expected a positive number of seconds"
            )
        timeout = p.timeout if t.timeout is None else t.timeout
        if hb.interval > 0 and timeout >= hb.timeout:
            # While an async handler runs, the connection's frames (its pongs too) wait.
            raise ConfigError(
                f"{where}.timeout is {timeout:g} s; expected less than heartbeat.timeout "
                f"({hb.timeout:g} s): a connection waiting for its backend reads no pong"
            )
        for name in t.forward_headers:
            if not _HEADER_NAME.fullmatch(name):
                raise ConfigError(
                    f"{where}.forward_headers has value {name!r}; expected a list of header names"
                )
    if p.types and "proxy" not in s.plugins.enabled:
        raise ConfigError(
            f"{src}: proxy.types is set but the plugin proxy is not in plugins.enabled; "
            "add proxy there"
        )


def _validate_presence_broker(src: str, s: Settings) -> None:
    """Presence's Redis store runs its scripts in pipelines, which redis-py's cluster client
    refuses: on ``redis-cluster`` the settings that need it stop start-up instead."""
    if s.broker.type != "redis-cluster":
        return
    why = "expected none with broker.type redis-cluster (presence needs redis or memory)"
    for i, rule in enumerate(s.rooms.rules):
        for key in ("presence", "join_leave"):
            if getattr(rule, key):
                raise ConfigError(f"{src}: rooms.rules[{i}].{key} is true; {why}")
    for i, endpoint in enumerate(s.webhooks.endpoints):
        tracked = [e for e in endpoint.events if e.startswith(("room-", "member-"))]
        if tracked:
            raise ConfigError(f"{src}: webhooks.endpoints[{i}].events has {tracked[0]!r}; {why}")


def _validate_compression(src: str, c: CompressionSettings) -> None:
    if not 1 <= c.level <= 9:
        raise ConfigError(
            f"{src}: compression.level has value {c.level}; expected a whole number from 1 to 9"
        )
    if c.min_size < 0:
        raise ConfigError(
            f"{src}: compression.min_size has value {c.min_size}; expected a whole number of bytes"
        )


def check_workers(s: Settings, name: str, workers: int) -> None:
    """``server.workers`` (or ``--workers``, name says which) fits: at least 1, and 1 on
    the memory broker, whose rooms do not reach past one process."""
    where = f"{s.source}: {name}" if name.startswith("server.") else name
    if workers < 1:
        raise ConfigError(
            f"{where} has value {workers}; expected a whole number of processes, at least 1"
        )
    if workers > 1 and s.broker.type == "memory":
        raise ConfigError(
            f"{where} has value {workers}; expected 1 with broker.type memory (workers are "
            "separate nodes and share rooms only through broker.type redis or redis-cluster)"
        )


def _validate_broker(src: str, b: BrokerSettings) -> None:
    if not b.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"{src}: broker.url has value {b.url!r}; expected a redis://, rediss:// or unix:// URL"
        )
    if b.type == "redis-cluster":
        _validate_cluster_url(src, b.url)
    if re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", b.channel_prefix) is None:
        raise ConfigError(
            f"{src}: broker.channel_prefix has value {b.channel_prefix!r}; expected 1 to 64 "
            "characters of [A-Za-z0-9_.:-]"
        )
    if b.heartbeat <= 0:
        raise ConfigError(
            f"{src}: broker.heartbeat has value {b.heartbeat:g}; expected a positive number "
            "of seconds"
        )
    if isinstance(b.partitions, bool) or not 1 <= b.partitions <= 16384:
        raise ConfigError(
            f"{src}: broker.partitions has value {b.partitions!r}; expected an integer from 1 "
            "to 16384"
        )
    if b.probe_interval <= 0:
        raise ConfigError(
            f"{src}: broker.probe_interval has value {b.probe_interval:g}; expected a positive "
            "number of seconds"
        )
    if b.unsubscribe_delay < 0:
        raise ConfigError(
            f"{src}: broker.unsubscribe_delay has value {b.unsubscribe_delay:g}; expected a "
            "number of seconds, 0 or more"
        )


def _validate_cluster_url(src: str, url: str) -> None:
    """A Redis Cluster is reached over TCP and has database 0 only."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "unix" or parts.path.strip("/") not in ("", "0"):
        shown = url.replace(f":{parts.password}@", ":***@", 1) if parts.password else url
        raise ConfigError(
            f"{src}: broker.url has value {shown!r}; expected a redis:// or rediss:// URL of one "
            "node of the cluster, without a database other than 0 (broker.type redis-cluster)"
        )


def _validate_rooms(src: str, r: RoomsSettings) -> None:
    if r.leave_delay < 0:
        raise ConfigError(
            f"{src}: rooms.leave_delay has value {r.leave_delay:g}; expected a number of "
            "seconds, 0 or more"
        )
    if r.presence_max_members < 0:
        raise ConfigError(
            f"{src}: rooms.presence_max_members has value {r.presence_max_members}; expected "
            "a whole number of members, 0 for no cap"
        )
    for i, rule in enumerate(r.rules):
        if not rule.match:
            raise ConfigError(f"{src}: rooms.rules[{i}].match is empty; expected a room glob")
        h = rule.history
        if h is not None and (h.size < 1 or h.ttl <= 0):
            raise ConfigError(
                f"{src}: rooms.rules[{i}].history has value {dataclasses.asdict(h)!r}; expected "
                "a size of at least 1 and a ttl above 0 seconds"
            )


def _validate_webhooks(src: str, w: WebhooksSettings) -> None:
    for key in ("retry_for", "timeout", "queue_size", "batch_max"):
        value = getattr(w, key)
        if not value > 0:
            expect = next(f for f in dataclasses.fields(w) if f.name == key).metadata["expect"]
            raise ConfigError(f"{src}: webhooks.{key} has value {value:g}; expected {expect}")
    for i, e in enumerate(w.endpoints):
        where = f"{src}: webhooks.endpoints[{i}]"
        if not _http_url(e.url):
            raise ConfigError(
                f"{where}.url has value {e.url!r}; expected an http:// or https:// URL"
            )
        if (e.secret is None) == (e.secret_env is None) or e.secret == "":
            raise ConfigError(f"{where} needs exactly one of secret (non-empty) and secret_env")
        unknown = [ev for ev in e.events if ev not in WEBHOOK_EVENTS]
        if unknown or not e.events:
            raise ConfigError(
                f"{where}.events has value {e.events!r}; expected a non-empty list of "
                + ", ".join(WEBHOOK_EVENTS)
            )


def _resolve_secrets(s: Settings, environ: Mapping[str, str]) -> Settings:
    """``secret_env`` names a variable: its value becomes the endpoint's secret."""
    endpoints = []
    for i, e in enumerate(s.webhooks.endpoints):
        if e.secret_env is not None:
            value = environ.get(e.secret_env, "")
            if not value:
                raise ConfigError(
                    f"{s.source}: webhooks.endpoints[{i}].secret_env names {e.secret_env}, "
                    "which is not set (or empty) in the environment"
                )
            e = dataclasses.replace(e, secret=value)
        endpoints.append(e)
    if not endpoints:
        return s
    return dataclasses.replace(s, webhooks=dataclasses.replace(s.webhooks, endpoints=endpoints))


_deprecations_logged: set[str] = set()


def log_deprecations(s: Settings) -> None:
    """Say once per process what in these settings is deprecated."""
    import logging

    if s.history.rooms and "history.rooms" not in _deprecations_logged:
        _deprecations_logged.add("history.rooms")
        logging.getLogger("miaws").warning(
            "%s: history.rooms is deprecated; it means the same as history: {size, ttl} in a "
            "rooms.rules entry (rooms.rules are matched first)",
            s.source,
        )


def _validate_limits(src: str, s: Settings) -> None:
    for f in dataclasses.fields(s.limits):
        value = getattr(s.limits, f.name)
        if value < 0:
            raise ConfigError(
                f"{src}: limits.{f.name} has value {value:g}; expected {f.metadata['expect']}"
            )
    if s.auth.late_timeout < 0:
        raise ConfigError(
            f"{src}: auth.late_timeout has value {s.auth.late_timeout:g}; expected a number of "
            "seconds"
        )


def build_settings(
    data: Mapping[str, Any] | None,
    *,
    source: str = "defaults",
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from a parsed mapping (as from YAML) plus the environment, validated."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: the file must hold a mapping of sections, not {type(data).__name__}"
        )
    known = sections()
    merged: dict[str, dict[str, Any]] = {}
    for name, values in data.items():
        if name not in known:
            raise ConfigError(
                f"{source}: {name} is not a known section (known: {', '.join(known)})"
            )
        if values is None:
            values = {}
        if name == "webhooks" and isinstance(values, list):
            values = {"endpoints": values}  # the short form: webhooks: [{url: ...}, ...]
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: {name} has value {values!r}; expected a mapping")
        merged[name] = dict(values)
    from_env = _apply_env(os.environ if environ is None else environ, merged)
    built = {
        name: _build_section(source, name, cls, merged.get(name, {})) for name, cls in known.items()
    }
    settings = Settings(**built, source=source)
    try:
        _validate(settings)
    except ConfigError as exc:  # a value the environment gave is the environment's fault
        for key, env in from_env.items():
            if str(exc).startswith(f"{source}: {key} "):
                raise ConfigError(
                    str(exc).replace(f"{source}: {key}", f"environment: {env} (for {key})", 1)
                ) from None
        raise
    return _resolve_secrets(settings, os.environ if environ is None else environ)


def config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """--config, else MIAWS_CONFIG, else ./config.yaml when present, else None (defaults)."""
    env = os.environ if environ is None else environ
    chosen = explicit or env.get("MIAWS_CONFIG") or None
    if chosen:
        return Path(chosen)
    local = Path("config.yaml")
    return local if local.is_file() else None


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a config file (None: defaults only), applying the environment."""
    if path is None:
        return build_settings({}, environ=environ)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        context = getattr(exc, "context", None)
        reason = "; ".join(str(p) for p in (context, problem) if p) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where} ({reason})") from None
    settings = build_settings(data, source=source, environ=environ)
    return _resolve_paths(settings, path.parent)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    """Relative directories in a config file are relative to the file, not to the cwd."""
    plugins = dataclasses.replace(
        settings.plugins, paths=[str(base / p) for p in settings.plugins.paths]
    )
    schemas = settings.schemas
    if schemas.path is not None:
        schemas = dataclasses.replace(schemas, path=str(base / schemas.path))
    return dataclasses.replace(settings, plugins=plugins, schemas=schemas)
