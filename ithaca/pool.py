"""Per-route server pool: idle and active server connections, the FIFO wait queue of clients
when pool_size is reached, connecting new servers, and handing servers back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from .protocol import SqlState
from .server import ServerConn, ServerError

log = logging.getLogger("ithaca.pool")

Connector = Callable[[], Awaitable[ServerConn]]


class PoolTimeout(ServerError):
    """No server became free within pool_timeout."""


class ServerPool:
    """Servers of one route. pool_size 0 means no limit; pool_timeout_ms 0 waits forever."""

    def __init__(self, name: str, connect: Connector, pool_size: int, pool_timeout_ms: int,
                 retry_window_ms: int = 0) -> None:
        self.name = name
        self._connect = connect
        self.pool_size = pool_size
        self.pool_timeout_ms = pool_timeout_ms
        self.retry_window_ms = retry_window_ms  # keep retrying failed connects this long
        self.generation = 0  # bumped when the storage changes; older servers are not reused
        self.server_lifetime = 0  # seconds; older servers are closed when they come back
        self.idle: deque[ServerConn] = deque()
        self.active: set[ServerConn] = set()
        self.connecting = 0
        self._waiters: deque[asyncio.Future[ServerConn | None]] = deque()
        self.closed = False
        self.total_acquired = 0  # for the stats line

    def __repr__(self) -> str:
        return (f"<ServerPool {self.name} idle={len(self.idle)} active={len(self.active)} "
                f"connecting={self.connecting} waiting={len(self._waiters)}>")

    @property
    def total(self) -> int:
        return len(self.idle) + len(self.active) + self.connecting

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _has_room(self) -> bool:
        return self.pool_size == 0 or self.total < self.pool_size

    async def acquire(self) -> ServerConn:
        """A server for exclusive use: idle one, a new one if there is room, else wait in line."""
        started = time.monotonic()
        deadline = started + self.pool_timeout_ms / 1000 if self.pool_timeout_ms else None
        while True:
            if self.closed:
                raise ServerError("server pool is shut down", SqlState.ADMIN_SHUTDOWN)
            server = self._pop_idle()
            if server is None and self._has_room() and not self._waiters:
                server = await self._open(started)
            if server is None:
                server = await self._wait(deadline)
            if server is not None:
                return self._check_out(server)

    def try_acquire(self) -> ServerConn | None:
        """An idle server right now, without waiting (None when none is idle or others wait
        in line: they come first)."""
        if self._waiters or self.closed:
            return None
        server = self._pop_idle()
        return self._check_out(server) if server is not None else None

    def _check_out(self, server: ServerConn) -> ServerConn:
        self.active.add(server)
        server.last_used_at = time.monotonic()
        self.total_acquired += 1
        return server

    def _pop_idle(self) -> ServerConn | None:
        while self.idle:
            server = self.idle.popleft()
            if not server.closed:
                return server
        return None

    async def _open(self, started: float) -> ServerConn:
        """Connect a new server, retrying network failures with backoff within the window."""
        self.connecting += 1
        delay = 0.05
        window = max(self.retry_window_ms, self.pool_timeout_ms) / 1000
        try:
            while True:
                try:
                    server = await self._connect()
                    break
                except ServerError as exc:
                    retryable = exc.error is None or exc.sqlstate == SqlState.CANNOT_CONNECT_NOW
                    if not retryable or time.monotonic() + delay > started + window \
                            or self.closed:
                        raise
                    log.warning("%s: %s; retrying in %.2f s", self.name, exc.message, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
        finally:
            self.connecting -= 1
        server.pool = self
        server.generation = self.generation
        if self.closed:
            server.close()
            raise ServerError("server pool is shut down", SqlState.ADMIN_SHUTDOWN)
        return server

    async def _wait(self, deadline: float | None) -> ServerConn | None:
        """Wait for a released server (returned) or a freed slot (None, then retry)."""
        waiter: asyncio.Future[ServerConn | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            async with asyncio.timeout(timeout):
                server = await waiter
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                self.release(waiter.result())  # type: ignore[arg-type]  # pass it on
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"no server connection became free within pool_timeout "
                    f"({self.pool_timeout_ms} ms, pool_size {self.pool_size}) "
                    f"for route {self.name}",
                    SqlState.TOO_MANY_CONNECTIONS,
                ) from None
            raise
        if server is None and self._has_room():
            return await self._open(time.monotonic())
        return server

    def release(self, server: ServerConn) -> None:
        """Hand a clean, idle server to the first waiting client or back to the idle list."""
        self.active.discard(server)
        server.client = None
        server.last_used_at = time.monotonic()
        if server.closed or self.closed or server.generation != self.generation or (
                self.server_lifetime
                and server.last_used_at - server.created_at >= self.server_lifetime):
            server.close()
            self._slot_freed()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.active.add(server)
                waiter.set_result(server)
                return
        self.idle.append(server)

    async def add_idle(self) -> None:
        """Open one more server for the idle list (min_pool_size), if there is room."""
        if self.closed or not self._has_room():
            return
        self.release(await self._open(time.monotonic()))

    def discard(self, server: ServerConn) -> None:
        """Close a server that cannot be reused and let a waiter open a new one."""
        self.active.discard(server)
        if server in self.idle:
            self.idle.remove(server)
        server.client = None
        server.close()
        self._slot_freed()

    def _slot_freed(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close_idle(self, predicate: Callable[[ServerConn], bool] = lambda s: True) -> int:
        """Close idle servers matching predicate; returns how many were closed."""
        keep: deque[ServerConn] = deque()
        closed = 0
        for server in self.idle:
            if server.closed or predicate(server):
                server.close()
                closed += 1
            else:
                keep.append(server)
        self.idle = keep
        return closed

    def reconfigure(self, pool_size: int, pool_timeout_ms: int, retry_window_ms: int,
                    server_lifetime: int, storage_changed: bool) -> None:
        """Apply reloaded limits: new attachments see them; a new storage retires old servers."""
        self.server_lifetime = server_lifetime
        grew = pool_size == 0 or (self.pool_size != 0 and pool_size > self.pool_size)
        self.pool_size = pool_size
        self.pool_timeout_ms = pool_timeout_ms
        self.retry_window_ms = retry_window_ms
        if storage_changed:
            self.generation += 1
            self.close_idle()
        if grew or storage_changed:
            for _ in range(len(self._waiters)):
                if self._has_room():
                    self._slot_freed()

    def close(self) -> None:
        """Shut the pool: close idle servers now, active ones as they come back."""
        self.closed = True
        self.close_idle()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
