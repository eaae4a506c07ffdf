"""Cancel keys: each client gets a forged BackendKeyData; a CancelRequest carrying it is sent on
to the server attached to that client right now, with that server's real key."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from typing import Protocol

from .protocol import build_cancel_request

log = logging.getLogger("ithaca.cancel")

CANCEL_TIMEOUT = 5.0  # seconds to connect and send one cancel
MAX_CANCELS_IN_FLIGHT = 64


class CancelTarget(Protocol):
    """What the directory needs of a client: its attached server's address and real key."""

    def cancel_target(self) -> tuple[str, int, int, int] | None: ...


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
        target = entry[1].cancel_target()
        if target is None:
            return False
        host, port, backend_pid, backend_secret = target
        async with self._in_flight:
            try:
                async with asyncio.timeout(CANCEL_TIMEOUT):
                    _reader, writer = await asyncio.open_connection(host, port)
                    writer.write(build_cancel_request(backend_pid, backend_secret))
                    await writer.drain()
                    writer.close()
                    await writer.wait_closed()
            except (OSError, TimeoutError) as exc:
                log.warning("could not send cancel to %s:%s: %s", host, port, exc)
                return False
        return True
