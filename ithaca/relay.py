"""The hot path: bytes between one client and its attached server. Scans frame headers only,
forwards whole chunks, and counts sync points against ReadyForQuery to know when a
transaction pooling server can go back to the pool (reset.py decides its fate when the
client leaves)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .link import Link
from .params import ClientParams
from .protocol import ProtocolError, SqlState, build_error
from .protocol.scanner import ClientScanner, ServerScanner
from .reset import leave_server
from .server import ServerConn, ServerError

if TYPE_CHECKING:
    from .config import Rule
    from .router import Route


_S = ord("S")


class Relay:
    """Carries one logged-in client. In transaction pooling the server is attached at the first
    message of a transaction and released at ReadyForQuery 'I' with nothing outstanding; in
    session pooling it stays until the client leaves."""

    def __init__(self, client: Link, route: Route, clog: logging.LoggerAdapter,  # type: ignore[type-arg]
                 params: ClientParams) -> None:
        self.client = client
        self.route = route
        self.rule: Rule = route.rule  # the rule this client logged in with, kept over reloads
        self.pool = route.pool
        self.log = clog  # records carry the client's and server's ids (%i, %s)
        self.params = params
        self.release_each_transaction = self.rule.pool in ("transaction", "statement")
        self.statement_pooling = self.rule.pool == "statement"
        self.server: ServerConn | None = None
        self.client_scan = ClientScanner(route.max_message)
        self.server_scan = ServerScanner()
        self.outstanding = 0  # sync points ('Q', 'S', 'F') sent and not yet answered by 'Z'
        self.pending: list[bytes] = []  # client bytes waiting for a server
        self.attaching: asyncio.Task[None] | None = None
        self.finished = False
        self.closing = False  # shutting down: end the session at its next idle point
        self.release_deferred = False  # a cancel is in flight; release when it is done
        self.pinned = False  # keep the server across transactions (LISTEN)
        self.last_active = time.monotonic()
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    # -- start and stop ----------------------------------------------------------------------
    def start(self, initial: bytes) -> None:
        self.client.sink = self.on_client_data
        self.client.on_lost = self._client_lost
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
            self._detach_server(server)
            leave_server(self, server)
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

    @property
    def idle(self) -> bool:
        """Nothing asked of the server and no message half sent."""
        return (self.outstanding == 0 and not self.client_scan.in_group and not self.pending
                and self.client_scan.at_boundary and self.server_scan.at_boundary)

    @property
    def transaction_status(self) -> bytes:
        return self.server_scan.status if self.server is not None else b"I"

    def shutdown(self) -> None:
        """Graceful stop: end now if idle outside a transaction, else after the current one."""
        self.closing = True
        if self.idle and self.transaction_status == b"I":
            self.fail("terminating connection due to administrator command (ithaca is "
                      "shutting down)", SqlState.ADMIN_SHUTDOWN)

    # -- client -> server --------------------------------------------------------------------
    def on_client_data(self, data: bytes) -> None:
        scan = self.client_scan
        try:
            scan.scan(data)
        except ProtocolError as exc:
            self.fail(exc.message, exc.sqlstate)
            return
        self.last_active = time.monotonic()
        self.outstanding += scan.sync_points
        terminate_at = scan.terminate_at
        if terminate_at >= 0:
            data = data[:terminate_at]
        if data:
            server = self.server
            if server is not None:
                self.forward_to_server(server, data)
            elif self.attaching is None and (server := self._attach_now()) is not None:
                self.forward_to_server(server, data)
            else:
                self.pending.append(data)
                if self.attaching is None:
                    self.client.pause_reading()
                    self.attaching = asyncio.get_running_loop().create_task(self._attach())
        if terminate_at >= 0:
            self.finish("client sent Terminate")

    def forward_to_server(self, server: ServerConn, data: bytes) -> None:
        server.link.write(data)

    def _attach_now(self) -> ServerConn | None:
        """The common case without a task: an idle server whose settings already match."""
        server = self.pool.try_acquire()
        if server is None:
            return None
        if self.rule.maintain_params and self.params.deploy_sql(server) is not None:
            self.pool.release(server)  # back to the idle list; the task path deploys
            return None
        self._attach_server(server)
        return server

    async def _attach(self) -> None:
        try:
            server = await self.pool.acquire()
        except asyncio.CancelledError:
            return
        except ServerError as exc:
            self.attaching = None
            self.fail(exc.message, exc.sqlstate)
            return
        except Exception as exc:  # never leave the client waiting on a dead task
            self.log.exception("attaching a server failed")
            self.attaching = None
            self.fail(f"could not get a server connection: {exc}", SqlState.CONNECTION_FAILURE)
            return
        try:
            if self.rule.maintain_params:
                await self.params.deploy(server)
        except asyncio.CancelledError:
            self.pool.discard(server)
            return
        except Exception as exc:
            self.attaching = None
            self.pool.discard(server)
            sqlstate = getattr(exc, "sqlstate", SqlState.CONNECTION_FAILURE)
            self.fail(f"could not apply client parameters on the server: {exc}", sqlstate)
            return
        self.attaching = None
        if self.finished:
            self.pool.release(server)
            return
        self._attach_server(server)
        data = b"".join(self.pending)
        self.pending.clear()
        self.forward_to_server(server, data)
        self.client.resume_reading()

    def _attach_server(self, server: ServerConn) -> None:
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

    def _detach_server(self, server: ServerConn) -> None:
        self.server = None
        link = server.link
        link.sink = server.idle_sink
        link.on_lost = None
        link.peer = None
        self.client.peer = None
        link.resume_reading()

    # -- server -> client --------------------------------------------------------------------
    def on_server_data(self, data: bytes) -> None:
        scan = self.server_scan
        try:
            scan.scan(data)
        except ProtocolError as exc:
            self._server_broke(exc)
            return
        if scan.params:
            self.params.note_reported(scan.params, self.server)
        if scan.copy_in and self.outstanding and not self.client_scan.in_group \
                and self.client_scan.last_sync == _S:
            # PostgreSQL ignores a Sync that arrives during copy-in mode (libpq sends one
            # after Execute and another after CopyDone); that first Sync gets no 'Z'.
            self.outstanding -= 1
            self.sync_ignored()
        if scan.listen:
            # LISTEN pins the client to this server so notifications reach it.
            self.pinned = scan.listen > 0
        self.deliver(data)
        if scan.ready_count:
            self.outstanding = max(0, self.outstanding - scan.ready_count)
            self.last_active = time.monotonic()
            self.after_ready()

    def deliver(self, data: bytes) -> None:
        """Server bytes to the client (the prepared-statement relay rewrites some)."""
        self.client.write(data)

    def sync_ignored(self) -> None:
        """The server skipped the client's last Sync (copy-in mode)."""

    @property
    def server_state_known(self) -> bool:
        """False when the server may hold state the pool cannot account for."""
        return True

    def after_ready(self) -> None:
        """At a ReadyForQuery: release the server, or end a closing session, when idle."""
        scan = self.server_scan
        if self.statement_pooling and scan.status != b"I" and scan.at_boundary:
            self.fail("transaction blocks are not allowed in statement pooling",
                      SqlState.FEATURE_NOT_SUPPORTED)
            return
        if not self.idle or self.server_scan.status != b"I" or self.server is None:
            return
        if self.closing:
            self.fail("terminating connection due to administrator command (ithaca is "
                      "shutting down)", SqlState.ADMIN_SHUTDOWN)
            return
        if self.release_each_transaction and not self.pinned:
            if self.server.cancels_in_flight:
                self.release_deferred = True
                return
            self.release_server()

    def release_server(self) -> None:
        server = self.server
        assert server is not None
        server.status = b"I"
        self._detach_server(server)
        self.pool.release(server)

    def _server_broke(self, exc: ProtocolError) -> None:
        server = self.server
        self.log.error("protocol error from server %r: %s", server, exc.message)
        if server is not None:
            self._detach_server(server)
            self.pool.discard(server)
        self.fail(f"server sent invalid data: {exc.message}", SqlState.PROTOCOL_VIOLATION)

    def _server_lost(self, _link: Link) -> None:
        server = self.server
        if server is None or self.finished:
            return
        self.log.warning("server %r closed the connection", server)
        self._detach_server(server)
        self.pool.discard(server)
        self.fail("server closed the connection unexpectedly", SqlState.CONNECTION_FAILURE)

    # -- cancel requests -----------------------------------------------------------------------
    def cancel_begin(self) -> ServerConn | None:
        """The server to cancel on, pinned to this client until cancel_end."""
        server = self.server
        if server is None or server.closed or self.idle:
            return None
        server.cancels_in_flight += 1
        return server

    def cancel_end(self, server: ServerConn) -> None:
        server.cancels_in_flight -= 1
        if server.cancels_in_flight == 0 and self.release_deferred and self.server is server:
            self.release_deferred = False
            self.after_ready()


