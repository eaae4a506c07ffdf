"""auth_query: fetch a user's secret from PostgreSQL through the route of (auth_query_db,
auth_query_user), with `$1` bound to the user name, and cache it for a few seconds."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..protocol import (
    build_bind,
    build_execute,
    build_parse,
    build_sync,
)

if TYPE_CHECKING:
    from ..config import Rule
    from ..router import Router

log = logging.getLogger("ithaca.auth")

CACHE_SECONDS = 10.0
QUERY_TIMEOUT = 10.0
_CACHE_MAX = 10000


class AuthQueryFailed(Exception):
    """The auth_query could not be run; the client gets a generic authentication failure."""


class SecretCache:
    """Secrets found by auth_query, per (query, db, user, client user), for CACHE_SECONDS."""

    def __init__(self, ttl: float = CACHE_SECONDS, clock=time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, str, str, str], tuple[float, str]] = {}

    def get(self, key: tuple[str, str, str, str]) -> str | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] <= self._clock():
            del self._entries[key]
            return None
        return hit[1]

    def put(self, key: tuple[str, str, str, str], secret: str) -> None:
        now = self._clock()
        if len(self._entries) >= _CACHE_MAX:
            for stale in [k for k, (expires, _) in self._entries.items() if expires <= now]:
                del self._entries[stale]
            if len(self._entries) >= _CACHE_MAX:
                self._entries.clear()
        self._entries[key] = (now + self.ttl, secret)

    def clear(self) -> None:
        self._entries.clear()


secret_cache = SecretCache()


async def fetch_secret(router: Router, rule: Rule, user: str) -> str | None:
    """The user's secret (plaintext, md5 or SCRAM), None when the query finds no row or NULL.
    Raise AuthQueryFailed when the query cannot be run (logged without any secret)."""
    assert rule.auth_query is not None
    query_db = rule.auth_query_db or ""
    query_user = rule.auth_query_user or ""
    key = (rule.auth_query, query_db, query_user, user)
    cached = secret_cache.get(key)
    if cached is not None:
        return cached
    try:
        query_rule = router.match(query_db, query_user)
        route = router.route_for(query_rule, query_db, query_user)
    except Exception as exc:  # RouteError: no rule for the auth_query route
        raise AuthQueryFailed(f"auth_query route {query_db}.{query_user}: "
                              f"{getattr(exc, 'message', exc)}") from None
    try:
        server = await route.pool.acquire()
    except Exception as exc:  # ServerError, PoolTimeout
        raise AuthQueryFailed(f"auth_query route {route.name}: "
                              f"{getattr(exc, 'message', exc)}") from None
    released = False
    try:
        rows, error = await server.exchange(
            build_parse("", rule.auth_query) + build_bind("", "", [user])
            + build_execute("", 2) + build_sync(), QUERY_TIMEOUT)
        if not server.closed and server.status == b"I":
            route.pool.release(server)
            released = True
    except Exception as exc:  # timeouts, a closed link, protocol errors
        raise AuthQueryFailed(f"auth_query on route {route.name} failed: "
                              f"{type(exc).__name__}: {exc}") from None
    finally:
        if not released:
            route.pool.discard(server)
    if error is not None:
        raise AuthQueryFailed(f"auth_query on route {route.name} failed: "
                              f"{error.sqlstate} {error.message}")
    if not rows:
        return None
    if len(rows) > 1:
        raise AuthQueryFailed(f"auth_query on route {route.name} returned more than one row")
    values = rows[0].values
    raw = values[1] if len(values) > 1 else (values[0] if values else None)
    if raw is None:
        return None
    secret = raw.decode("utf-8", "replace")
    secret_cache.put(key, secret)
    return secret
