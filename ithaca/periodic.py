"""Periodic maintenance, one tick a second, as small named tasks: expire idle servers
(pool_ttl) and old ones (server_lifetime), keep min_pool_size servers per route, drop idle
clients (pool_client_idle_timeout, pool_idle_in_transaction_timeout), and log stats."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .protocol import SqlState
from .server import ServerError

if TYPE_CHECKING:
    from .router import Route
    from .system import System

log = logging.getLogger("ithaca.periodic")

TICK = 1.0  # seconds


class ServerExpiry:
    """Close idle servers unused for pool_ttl seconds (above min_pool_size) or older than
    server_lifetime seconds."""

    def __init__(self, system: System) -> None:
        self.system = system

    def __repr__(self) -> str:
        return "<ServerExpiry pool_ttl/server_lifetime>"

    def tick(self, now: float) -> None:
        for route in list(self.system.router.routes.values()):
            rule = route.rule
            pool = route.pool
            ttl, lifetime = rule.pool_ttl, rule.server_lifetime
            if not ttl and not lifetime:
                continue
            spare = pool.total - rule.min_pool_size

            def expired(server, ttl=ttl, lifetime=lifetime) -> bool:  # type: ignore[no-untyped-def]
                nonlocal spare
                if lifetime and now - server.created_at >= lifetime:
                    spare -= 1
                    return True
                if ttl and spare > 0 and now - server.last_used_at >= ttl:
                    spare -= 1
                    return True
                return False

            closed = pool.close_idle(expired)
            if closed:
                log.debug("%s: closed %d expired idle servers", route.name, closed)


class MinPoolSize:
    """Open servers in the background until each route has min_pool_size of them."""

    def __init__(self, system: System) -> None:
        self.system = system
        self._filling: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<MinPoolSize filling={len(self._filling)}>"

    def tick(self, now: float) -> None:
        for route in list(self.system.router.routes.values()):
            wanted = route.rule.min_pool_size - route.pool.total
            if wanted > 0 and not route.removed and not route.pool.closed:
                for _ in range(wanted):
                    task = asyncio.get_running_loop().create_task(self._open(route))
                    self._filling.add(task)
                    task.add_done_callback(self._filling.discard)

    async def _open(self, route: Route) -> None:
        try:
            await route.pool.add_idle()
        except ServerError as exc:
            log.warning("%s: min_pool_size: %s", route.name, exc.message)


class ClientTimeouts:
    """Drop clients idle outside a transaction for pool_client_idle_timeout seconds, or idle
    inside one for pool_idle_in_transaction_timeout seconds; they get an ErrorResponse first."""

    def __init__(self, system: System) -> None:
        self.system = system

    def __repr__(self) -> str:
        return "<ClientTimeouts>"

    def tick(self, now: float) -> None:
        for client in list(self.system.clients):
            relay = client.relay
            if relay is None or relay.finished or not relay.idle:
                continue
            rule = relay.rule
            idle_for = now - relay.last_active
            if relay.transaction_status == b"I":
                limit = rule.pool_client_idle_timeout
                if limit and idle_for >= limit:
                    relay.fail("terminating connection due to idle-session timeout "
                               f"(pool_client_idle_timeout {limit} s)",
                               SqlState.IDLE_SESSION_TIMEOUT)
            else:
                limit = rule.pool_idle_in_transaction_timeout
                if limit and idle_for >= limit:
                    relay.fail("terminating connection due to idle-in-transaction timeout "
                               f"(pool_idle_in_transaction_timeout {limit} s)",
                               SqlState.IDLE_IN_TRANSACTION_SESSION_TIMEOUT)


class StatsTick:
    """Every stats_interval seconds, one log line per route (with log_stats yes)."""

    def __init__(self, system: System) -> None:
        self.system = system
        self._last = time.monotonic()
        self._acquired: dict[int, int] = {}

    def __repr__(self) -> str:
        return "<StatsTick>"

    def tick(self, now: float) -> None:
        config = self.system.config
        interval = config.stats_interval
        if not config.log_stats or interval <= 0 or now - self._last < interval:
            return
        elapsed = now - self._last
        self._last = now
        for route in list(self.system.router.routes.values()):
            pool = route.pool
            before = self._acquired.get(id(pool), 0)
            self._acquired[id(pool)] = pool.total_acquired
            rate = (pool.total_acquired - before) / elapsed
            log.info("stats: route %s: clients %d, servers %d (idle %d, active %d), "
                     "waiting %d, attaches/s %.1f", route.name, route.clients, pool.total,
                     len(pool.idle), len(pool.active), pool.waiting, rate)


class Periodic:
    def __init__(self, system: System) -> None:
        self.tasks = [ServerExpiry(system), MinPoolSize(system), ClientTimeouts(system),
                      StatsTick(system)]

    def __repr__(self) -> str:
        return f"<Periodic {self.tasks}>"

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for task in self.tasks:
                try:
                    task.tick(now)
                except Exception:  # a bug in one task must not stop the others
                    log.exception("periodic task %r failed", task)
