"""Link: the asyncio Protocol under every client and server socket. During setup phases
(startup, auth, reset) bytes queue up for an awaiting coroutine; in the relay phase they go
straight to a sink callback, and write flow control pauses the peer link."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass

from .protocol import MessageReader, ProtocolError

# Stop reading a socket in setup mode once this much is queued and nobody reads it.
_SETUP_HIGH_WATER = 1 << 20


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """TCP settings for every client and server socket (global nodelay and keepalive*)."""

    nodelay: bool = True
    keepalive: int = 15  # seconds idle before probes; 0 = off
    keepalive_interval: int = 5
    keepalive_probes: int = 3
    user_timeout_ms: int = 0

    def apply(self, sock: socket.socket) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.nodelay))
            if self.keepalive > 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, self.keepalive)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL,
                                max(1, self.keepalive_interval))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT,
                                max(1, self.keepalive_probes))
            if self.user_timeout_ms > 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, self.user_timeout_ms)
        except (OSError, AttributeError):  # not a TCP socket, or an option this OS lacks
            pass


tcp_options = TcpOptions()  # replaced by the instance from the config (start and reload)


def set_tcp_options(options: TcpOptions) -> None:
    global tcp_options
    tcp_options = options


class LinkClosed(Exception):
    """The peer closed the socket or it failed."""


class Link(asyncio.Protocol):
    __slots__ = (
        "transport",
        "sink",
        "peer",
        "on_lost",
        "_chunks",
        "_queued",
        "_waiter",
        "_eof",
        "_reading_paused",
        "_writing_paused",
        "closed",
        "lost_exc",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.sink: Callable[[bytes], None] | None = None  # relay phase: data goes here
        self.peer: Link | None = None  # relay phase: the link to pause when our writes back up
        self.on_lost: Callable[[Link], None] | None = None
        self._chunks: list[bytes] = []
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False
        self.closed = False
        self.lost_exc: BaseException | None = None

    # -- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            tcp_options.apply(sock)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink(data)
            return
        self._chunks.append(data)
        self._queued += len(data)
        if self._queued > _SETUP_HIGH_WATER and not self._reading_paused:
            self.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._eof = True
        self.lost_exc = exc
        self._wake()
        if self.on_lost is not None:
            callback, self.on_lost = self.on_lost, None
            callback(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.peer is not None:
            self.peer.resume_reading()

    # -- flow control -----------------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    # -- setup-phase reading ------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        """Return the bytes queued so far, waiting for some; raise LinkClosed at EOF."""
        while not self._chunks:
            if self._eof:
                raise LinkClosed("connection closed by peer")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks.clear()
        self._queued = 0
        self.resume_reading()
        return data

    def take_queued(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._queued = 0
        return data

    async def read_message(self, reader: MessageReader) -> tuple[bytes, bytes]:
        """Next whole message through `reader`, reading more from the socket as needed."""
        while True:
            message = reader.next_message()
            if message is not None:
                return message
            reader.feed(await self.read())

    # -- writing and closing ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def peername(self) -> str:
        if self.transport is None:
            return "?"
        peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            return f"{peer[0]}:{peer[1]}"
        return str(peer or "unix")


__all__ = ["Link", "LinkClosed", "ProtocolError"]
