"""The hot path: bytes between one client and its attached server. Scans frame headers only,
forwards whole chunks, counts sync points against ReadyForQuery to know when a transaction
pooling server can go back to the pool, and decides a server's fate when the client leaves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .link import Link
from .protocol import ProtocolError, SqlState, build_error
from .protocol.scanner import ClientScanner, ServerScanner
from .server import ServerConn, ServerError

if TYPE_CHECKING:
    from .router import Route

log = logging.getLogger("ithaca.relay")

_S = ord("S")
RESET_TIMEOUT = 5.0  # seconds for ROLLBACK / DISCARD ALL before the server is closed instead


class Relay:
    """Carries one logged-in client. In transaction pooling the server is attached at the first
    message of a transaction and released at ReadyForQuery 'I' with nothing outstanding; in
    session pooling it stays until the client leaves."""

    def __init__(self, client: Link, route: Route, client_id: str,
                 on_server_attached: Callable[[ServerConn | None], None] | None = None) -> None:
        self.client = client
        self.route = route
        self.pool = route.pool
        self.client_id = client_id
        self.release_each_transaction = route.rule.pool in ("transaction", "statement")
        self.server: ServerConn | None = None
        self.client_scan = ClientScanner(route.max_message)
        self.server_scan = ServerScanner()
        self.outstanding = 0  # sync points ('Q', 'S', 'F') sent and not yet answered by 'Z'
        self.pending: list[bytes] = []  # client bytes waiting for a server
        self.attaching: asyncio.Task[None] | None = None
        self.finished = False
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.on_server_attached = on_server_attached
        self.background: set[asyncio.Task[None]] = set()

    # -- start and stop ----------------------------------------------------------------------
    def start(self, initial: bytes, server: ServerConn | None = None) -> None:
        self.client.sink = self.on_client_data
        self.client.on_lost = self._client_lost
        if server is not None:
            self._bind(server)
        if initial:
            self.on_client_data(initial)

    def finish(self, reason: str) -> None:
        """End the session: close the client and decide what happens to the server."""
        if self.finished:
            return
        self.finished = True
        self.client.sink = None
        self.client.on_lost = None
        if self.attaching is not None:
            self.attaching.cancel()
        server = self.server
        if server is not None:
            self._unbind(server)
            self._leave_server(server)
        self.client.close()
        if not self.done.done():
            self.done.set_result(reason)

    def fail(self, message: str, sqlstate: str) -> None:
        """Tell the client why its session ends (FATAL ErrorResponse) and end it."""
        if not self.finished:
            self.client.write(build_error(sqlstate, message, severity="FATAL"))
        self.finish(message)

    def _client_lost(self, _link: Link) -> None:
        self.finish("client disconnected")

    # -- client -> server --------------------------------------------------------------------
    def on_client_data(self, data: bytes) -> None:
        scan = self.client_scan
        try:
            scan.scan(data)
        except ProtocolError as exc:
            self.fail(exc.message, exc.sqlstate)
            return
        self.outstanding += scan.sync_points
        terminate_at = scan.terminate_at
        if terminate_at >= 0:
            data = data[:terminate_at]
        if data:
            server = self.server
            if server is not None:
                server.link.write(data)
            else:
                self.pending.append(data)
                if self.attaching is None:
                    self.client.pause_reading()
                    self.attaching = asyncio.get_running_loop().create_task(self._attach())
        if terminate_at >= 0:
            self.finish("client sent Terminate")

    async def _attach(self) -> None:
        try:
            server = await self.pool.acquire()
        except ServerError as exc:
            self.attaching = None
            self.fail(exc.message, exc.sqlstate)
            return
        except asyncio.CancelledError:
            return
        self.attaching = None
        if self.finished:
            self.pool.release(server)
            return
        self._bind(server)
        data = b"".join(self.pending)
        self.pending.clear()
        server.link.write(data)
        self.client.resume_reading()

    def _bind(self, server: ServerConn) -> None:
        self.server = server
        server.client = self
        self.server_scan = ServerScanner()
        link = server.link
        link.sink = self.on_server_data
        link.on_lost = self._server_lost
        link.peer = self.client
        self.client.peer = link
        if self.client.writing_paused:
            link.pause_reading()
        if self.on_server_attached is not None:
            self.on_server_attached(server)

    def _unbind(self, server: ServerConn) -> None:
        self.server = None
        link = server.link
        link.sink = _idle_server_data(server)
        link.on_lost = None
        link.peer = None
        self.client.peer = None
        link.resume_reading()
        if self.on_server_attached is not None:
            self.on_server_attached(None)

    # -- server -> client --------------------------------------------------------------------
    def on_server_data(self, data: bytes) -> None:
        scan = self.server_scan
        try:
            scan.scan(data)
        except ProtocolError as exc:
            server = self.server
            log.error("%s: protocol error from server %r: %s", self.client_id, server, exc.message)
            if server is not None:
                self._unbind(server)
                self.pool.discard(server)
            self.fail(f"server sent invalid data: {exc.message}", SqlState.PROTOCOL_VIOLATION)
            return
        if scan.copy_in and self.outstanding and not self.client_scan.in_group \
                and self.client_scan.last_sync == _S:
            # PostgreSQL ignores a Sync that arrives during copy-in mode (libpq sends one
            # after Execute and another after CopyDone); that first Sync gets no 'Z'.
            self.outstanding -= 1
        ready = scan.ready_count
        self.client.write(data)
        if ready:
            self.outstanding = max(0, self.outstanding - ready)
            if (self.release_each_transaction and self.outstanding == 0 and scan.status == b"I"
                    and not self.client_scan.in_group and scan.at_boundary
                    and self.client_scan.at_boundary and self.server is not None):
                server = self.server
                server.status = b"I"
                self._unbind(server)
                self.pool.release(server)

    def _server_lost(self, _link: Link) -> None:
        server = self.server
        if server is None or self.finished:
            return
        log.warning("%s: server %r closed the connection", self.client_id, server)
        self._unbind(server)
        self.pool.discard(server)
        self.fail("server closed the connection unexpectedly", SqlState.CONNECTION_FAILURE)

    # -- the server's fate when the client leaves --------------------------------------------
    def _leave_server(self, server: ServerConn) -> None:
        scan = self.server_scan
        synced = (self.outstanding == 0 and not self.client_scan.in_group and scan.at_boundary
                  and self.client_scan.at_boundary and not server.closed)
        rule = self.route.rule
        if not synced:
            log.info("%s: client left with a request in flight; closing server %r",
                     self.client_id, server)
            self.pool.discard(server)
            return
        server.status = scan.status
        queries = []
        if scan.status != b"I":
            if not rule.pool_rollback:
                self.pool.discard(server)
                return
            queries.append("ROLLBACK")
        if rule.pool_discard and not self.release_each_transaction:
            queries.append("DISCARD ALL")
        if not queries:
            self.pool.release(server)
            return
        task = asyncio.get_running_loop().create_task(self._reset(server, queries))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _reset(self, server: ServerConn, queries: list[str]) -> None:
        server.link.sink = None
        try:
            for sql in queries:
                await server.run_query(sql, RESET_TIMEOUT)
        except (ServerError, ProtocolError, TimeoutError, ConnectionError, OSError) as exc:
            log.info("reset of %r failed (%s); closing it", server, exc)
            self.pool.discard(server)
            return
        except Exception:  # a bug: never return a server we are unsure of
            log.exception("reset of %r failed", server)
            self.pool.discard(server)
            return
        if server.status != b"I":
            self.pool.discard(server)
            return
        server.link.sink = _idle_server_data(server)
        self.pool.release(server)


def _idle_server_data(server: ServerConn) -> Callable[[bytes], None]:
    """Data from a server nobody is attached to (a FATAL before shutdown, a stray notice):
    the connection can no longer be trusted, so close it."""

    def on_data(_data: bytes) -> None:
        log.info("server %r sent data while idle; closing it", server)
        server.link.sink = None
        pool = server.pool
        if pool is not None:
            pool.discard(server)  # type: ignore[attr-defined]
        else:
            server.close()

    return on_data
