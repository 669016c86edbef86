"""Who a client is: authentication by JWT, static token or a backend, whatever the transport.

:class:`Authenticator` is built once from ``auth.*`` (a bad setting is a :class:`ConfigError`
at start-up).  A transport hands it what arrived with the connection and gets an
:class:`Identity` back, or an :class:`AuthError` to refuse with (HTTP 401 before the
upgrade, close 1008 after it)::

    identity = service.auth.identify(headers, query)      # None: wait for a late token
    identity = service.auth.identify_late(first_frame)     # {"type":"auth","token":...}
    identity.apply(client)                                 # user, allowed_rooms

With ``auth.mode: proxy`` ``identify`` returns an awaitable instead: a backend decides
(:mod:`miaws.transport.auth_proxy`).

``identify`` looks for the token in the ``token`` query parameter, then in an
``Authorization: Bearer`` header (then in ``extra``, e.g. the Socket.IO ``auth`` payload).
The JWT subject (``sub``) or the static token's user becomes ``client.user``; the rooms claim
(``auth.rooms_claim``, or a static token's ``rooms``) becomes ``client.allowed_rooms``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from miaws.config import Settings
from miaws.core.errors import AuthError, ConfigError
from miaws.core.model import Client
from miaws.core.rooms import room_allowed  # the room policy is the core's
from miaws.integration.backend import Backends
from miaws.transport.auth_proxy import ConnectProxy

__all__ = ["Authenticator", "AuthError", "Identity", "room_allowed", "bearer_token"]


@dataclass(frozen=True)
class Identity:
    """Who the client is and which rooms it may join (``None``: any room); ``info``: what a
    connect backend said about it (``auth.mode: proxy``), passed on to backends."""

    user: str | None = None
    rooms: frozenset[str] | None = None
    info: Any = None

    def apply(self, client: Client) -> None:
        client.user = self.user
        client.allowed_rooms = self.rooms
        client.connect_info = self.info


ANONYMOUS = Identity()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _rooms(value: Any, where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise AuthError(f"{where} must be a list of room names")
    return frozenset(value)


def _digest(token: str) -> bytes:
    # Static tokens are looked up by digest, so lookup time says nothing about the token.
    return hashlib.sha256(token.encode()).digest()


def _load_public_key(value: str, source: str) -> str:
    text = value
    if "-----BEGIN" not in value:
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{source}: auth.jwt_public_key has value {value!r}; expected PEM text or the "
                f"path of a readable PEM file ({exc.strerror})"
            ) from None
    try:
        jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).prepare_key(text)
    except (ValueError, TypeError, jwt.exceptions.InvalidKeyError):
        raise ConfigError(
            f"{source}: auth.jwt_public_key is not an RSA public key in PEM format"
        ) from None
    return text


class Authenticator:
    """The ``auth.*`` policy; see the module docstring."""

    def __init__(self, settings: Settings, backends: Backends | None = None) -> None:
        a = settings.auth
        src = settings.source
        self.mode = a.mode
        self.late_timeout = a.late_timeout
        self.rooms_claim = a.rooms_claim
        self.audience = a.jwt_audience
        self.issuer = a.jwt_issuer
        self._keys: dict[str, Any] = {}
        self._tokens: dict[bytes, Identity] = {}
        self.proxy: ConnectProxy | None = None
        if a.mode == "proxy":
            assert a.proxy_url is not None  # checked with the settings
            self.proxy = ConnectProxy(
                backends or Backends.from_settings(settings),
                a.proxy_url,
                a.proxy_headers,
                settings.proxy.timeout,
                a.proxy_cache_seconds,
            )
        elif a.mode == "jwt":
            if a.jwt_secret:
                self._keys["HS256"] = a.jwt_secret
            if a.jwt_public_key:
                self._keys["RS256"] = _load_public_key(a.jwt_public_key, src)
            if not self._keys:
                raise ConfigError(
                    f"{src}: auth.mode is jwt but neither auth.jwt_secret nor "
                    "auth.jwt_public_key is set"
                )
        elif a.mode == "token":
            if not a.tokens:
                raise ConfigError(f"{src}: auth.mode is token but auth.tokens is empty")
            for token, entry in a.tokens.items():
                self._tokens[_digest(str(token))] = self._static_identity(entry, src)

    @staticmethod
    def _static_identity(entry: Any, src: str) -> Identity:
        if isinstance(entry, str):
            return Identity(entry)
        if isinstance(entry, Mapping) and isinstance(entry.get("user"), str):
            extra = set(entry) - {"user", "rooms"}
            if not extra:
                try:
                    return Identity(entry["user"], _rooms(entry.get("rooms"), "rooms"))
                except AuthError:
                    pass
        raise ConfigError(
            f"{src}: auth.tokens has an entry {entry!r}; expected a user name or "
            "{user: NAME, rooms: [ROOM, ...]}"
        )

    @property
    def required(self) -> bool:
        return self.mode != "none"

    def identify(
        self,
        headers: Mapping[str, str],
        query: Mapping[str, Any],
        extra: str | None = None,
    ) -> Identity | None | Awaitable[Identity]:
        """The identity of a connecting client, from what came with the upgrade.

        :param headers: request headers (``Authorization`` is read, case as given by the
            transport: both ``Authorization`` and ``authorization`` are tried).
        :param query: query parameters; a value may be a string, bytes or a list of them.
        :param extra: a token from elsewhere (the Socket.IO ``auth`` payload), tried last.
        :return: the identity; ``None`` when there is no token and ``auth.late_timeout``
            lets the client send it as its first message; an awaitable of it in mode proxy
            (which raises :class:`AuthError`, or ``BackendError`` / ``BackendTimeout``).
        :raises AuthError: a token is needed and missing, or it is invalid or expired.
        """
        if not self.required:
            return ANONYMOUS
        if self.proxy is not None:
            return self._ask_backend(self.proxy, headers, query, extra)
        token = _first(query.get("token"))
        if token is None:
            token = bearer_token(headers.get("Authorization") or headers.get("authorization"))
        if token is None:
            token = extra
        if token is None:
            if self.late_timeout > 0:
                return None
            raise AuthError("authentication required: no token")
        return self.check(token)

    @staticmethod
    async def _ask_backend(
        proxy: ConnectProxy, headers: Mapping[str, str], query: Mapping[str, Any], token: Any
    ) -> Identity:
        user, rooms, info = await proxy.identify(headers, query, token)
        return Identity(user, rooms, info)

    def identify_late(self, text: str | bytes) -> Identity:
        """The identity from a first message ``{"type":"auth","token":"..."}``.

        :raises AuthError: anything else, or a bad token.
        """
        try:
            message = json.loads(text)
        except ValueError:
            raise AuthError('authentication required: expected {"type":"auth"}') from None
        if not isinstance(message, dict) or message.get("type") != "auth":
            raise AuthError('authentication required: expected {"type":"auth"}')
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise AuthError("authentication failed: token must be a non-empty string")
        return self.check(token)

    def check(self, token: str) -> Identity:
        """Verify one token; :class:`AuthError` says briefly why it is refused."""
        if self.mode == "token":
            identity = self._tokens.get(_digest(token))
            if identity is None:
                raise AuthError("authentication failed: unknown token")
            return identity
        if self.mode == "jwt":
            return self._check_jwt(token)
        if self.mode == "proxy":  # a backend decides, at the upgrade only
            raise AuthError('authentication failed: no {"type":"auth"} with auth.mode proxy')
        return ANONYMOUS

    def _check_jwt(self, token: str) -> Identity:
        try:
            alg = str(jwt.get_unverified_header(token).get("alg"))
            key = self._keys.get(alg)
            if key is None:
                raise AuthError(f"authentication failed: algorithm {alg!r} not accepted")
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("authentication failed: token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"authentication failed: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str):
            raise AuthError("authentication failed: sub must be a string")
        return Identity(subject, _rooms(claims.get(self.rooms_claim), f"claim {self.rooms_claim}"))


def _first(value: Any) -> str | None:
    """The first of one query value or of a list of them, as text; None if empty."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None
