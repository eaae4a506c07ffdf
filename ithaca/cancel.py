"""Cancel keys: each client gets a forged BackendKeyData; a CancelRequest carrying it is sent on
to the server attached to that client right now, with that server's real key."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from typing import Protocol

from .protocol import build_cancel_request
from .server import ServerConn

log = logging.getLogger("ithaca.cancel")

CANCEL_TIMEOUT = 5.0  # seconds to connect and send one cancel
MAX_CANCELS_IN_FLIGHT = 64


class CancelTarget(Protocol):
    """What the directory needs of a client: the server running its query, pinned to it
    while the cancel is on its way so the server cannot move to another client meanwhile."""

    def cancel_begin(self) -> ServerConn | None: ...

    def cancel_end(self, server: ServerConn) -> None: ...


class CancelDirectory:
    def __init__(self) -> None:
        self._clients: dict[int, tuple[int, CancelTarget]] = {}
        self._in_flight = asyncio.Semaphore(MAX_CANCELS_IN_FLIGHT)

    def register(self, client: CancelTarget) -> tuple[int, int]:
        """A fresh, unguessable (pid, secret) for this client."""
        while True:
            pid = secrets.randbelow(2**31 - 1) + 1
            if pid not in self._clients:
                break
        secret = secrets.randbits(32)
        self._clients[pid] = (secret, client)
        return pid, secret

    def unregister(self, pid: int) -> None:
        self._clients.pop(pid, None)

    async def cancel(self, pid: int, secret: int) -> bool:
        """Forward a cancel; False when the key is unknown or nothing is running for it."""
        entry = self._clients.get(pid)
        if entry is None or not hmac.compare_digest(entry[0].to_bytes(4, "big"),
                                                    (secret & 0xFFFFFFFF).to_bytes(4, "big")):
            log.info("cancel request with an unknown key ignored")
            return False
        client = entry[1]
        async with self._in_flight:
            server = client.cancel_begin()
            if server is None:
                return False
            try:
                async with asyncio.timeout(CANCEL_TIMEOUT):
                    reader, writer = await asyncio.open_connection(server.host, server.port)
                    try:
                        writer.write(build_cancel_request(server.backend_pid,
                                                          server.backend_secret))
                        await writer.drain()
                        # PostgreSQL closes the socket once it has signalled the backend;
                        # only then may the server go to another client.
                        await reader.read()
                    finally:
                        writer.close()
            except (OSError, TimeoutError) as exc:
                log.warning("could not send cancel to %r: %s", server, exc)
                return False
            finally:
                client.cancel_end(server)
        return True
