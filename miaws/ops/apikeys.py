"""Bearer keys for ``/api/*``: ``api.keys`` in the config plus ``MIAWS_API_KEY``.

With no key configured the API is open (a server on a private network).  Otherwise a request
without ``Authorization: Bearer <key>`` gets 401 and one with a wrong key gets 403.  Keys are
compared with :func:`hmac.compare_digest`, so the time taken says nothing about the key.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from miaws.config import Settings

__all__ = ["api_keys", "check_bearer", "ENV_KEY"]

ENV_KEY = "MIAWS_API_KEY"


def api_keys(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """The accepted keys: the config's, plus the environment's when set."""
    env = (os.environ if environ is None else environ).get(ENV_KEY, "")
    return [*settings.api.keys, env] if env else list(settings.api.keys)


def check_bearer(authorization: str | None, keys: list[str]) -> int:
    """200 if allowed, 401 if a key is needed and none was given, 403 if it is wrong."""
    if not keys:
        return 200
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return 401
    given = token.strip().encode()
    # Compare with every key (no early exit), so timing does not tell which one matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return 200 if matched else 403
