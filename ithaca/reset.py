"""A server's fate when its client leaves, in Odyssey's order: a query still running is
cancelled (pool_cancel) and drained, or the server is closed; an open transaction is rolled
back (pool_rollback) or the server is closed; session state is discarded (pool_discard) where
the pooling mode needs it. Any failure or timeout closes the server."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .protocol import ProtocolError, build_cancel_request, build_sync
from .protocol.scanner import ServerScanner
from .server import ServerConn, ServerError

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger("ithaca.reset")

RESET_TIMEOUT = 5.0  # seconds for cancel + drain, ROLLBACK or DISCARD ALL
_background: set[asyncio.Task[None]] = set()


def leave_server(relay: Relay, server: ServerConn) -> None:
    """Decide, right when the client is gone, whether the server can be reused."""
    pool = relay.pool
    rule = relay.rule
    if server.closed:
        pool.discard(server)
        return
    client_scan = relay.client_scan
    synced = relay.outstanding == 0 and not client_scan.in_group and \
        relay.server_scan.at_boundary and client_scan.at_boundary
    if not synced and not (rule.pool_cancel and client_scan.at_boundary):
        relay.log.info("client left in the middle of a request; closing %r", server)
        pool.discard(server)
        return
    server.status = relay.server_scan.status
    queries = []
    if rule.pool_discard and not relay.release_each_transaction:
        queries.append("DISCARD ALL")
    elif not relay.server_state_known:
        queries.append("DEALLOCATE ALL")  # which of its in-flight Parses landed is unknown
    elif relay.pinned:
        queries.append("UNLISTEN *")  # a transaction-pooling listener leaves no LISTEN behind
    drain = None
    if not synced:
        drain = (relay.server_scan, relay.outstanding, client_scan.in_group)
    elif relay.server_scan.status != b"I":
        if not rule.pool_rollback:
            pool.discard(server)
            return
    elif not queries:
        pool.release(server)
        return
    _spawn(_reset(relay, server, drain, rule.pool_rollback, queries))


def _spawn(coro: object) -> None:
    task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _reset(relay: Relay, server: ServerConn,
                 drain: tuple[ServerScanner, int, bool] | None,
                 rollback: bool, queries: list[str]) -> None:
    pool = relay.pool
    server.link.sink = None
    try:
        async with asyncio.timeout(RESET_TIMEOUT):
            if drain is not None:
                await _cancel_and_drain(server, *drain)
            if server.status != b"I":
                if not rollback:
                    pool.discard(server)
                    return
                await server.run_query("ROLLBACK", RESET_TIMEOUT)
            for sql in queries:
                await server.run_query(sql, RESET_TIMEOUT)
    except (ServerError, ProtocolError, TimeoutError, ConnectionError, OSError) as exc:
        log.info("reset of %r failed (%s); closing it", server, exc or type(exc).__name__)
        pool.discard(server)
        return
    except asyncio.CancelledError:
        pool.discard(server)
        raise
    except Exception:  # a bug: never return a server we are unsure of
        log.exception("reset of %r failed", server)
        pool.discard(server)
        return
    if server.status != b"I" or server.closed:
        pool.discard(server)
        return
    server.link.sink = server.idle_sink
    pool.release(server)


async def _cancel_and_drain(server: ServerConn, scan: ServerScanner, outstanding: int,
                            open_group: bool) -> None:
    """Cancel what the departed client left running and read until every 'Z' it was owed."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    owed = outstanding + (1 if open_group else 0)

    def on_data(data: bytes) -> None:
        nonlocal owed
        scan.scan(data)
        owed -= scan.ready_count
        if owed <= 0 and scan.at_boundary and not done.done():
            done.set_result(None)

    server.link.sink = on_data
    if open_group:
        server.link.write(build_sync())
    if outstanding:
        await _send_cancel(server)
    await done
    server.status = scan.status
    server.link.sink = None


async def _send_cancel(server: ServerConn) -> None:
    _reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(build_cancel_request(server.backend_pid, server.backend_secret))
        await writer.drain()
        await _reader.read()  # PostgreSQL closes the socket once the signal is sent
    finally:
        writer.close()
