"""Bounded framing of the byte stream: startup-phase packets (Int32 length, no type byte) and regular
messages (type byte + Int32 length). A frame is handed out only when complete; bad lengths raise."""

from __future__ import annotations

import struct

from .errors import ProtocolError
from .startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupPacket,
    parse_startup_packet,
)

MAX_STARTUP_PACKET = 10000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
DEFAULT_MAX_MESSAGE = 1 << 30  # PostgreSQL refuses larger allocations (MaxAllocSize is 1 GiB - 1)
_MIN_STARTUP_PACKET = 8  # length word + request code / protocol version
_HEADER = 5  # type byte + Int32 length
_COMPACT_AT = 64 * 1024  # drop consumed bytes once this many have piled up at the front

_I32 = struct.Struct("!i")
_TYPE_BYTES = tuple(bytes((code,)) for code in range(256))


class StartupReader:
    """Frames the packets a client sends before its StartupMessage is accepted.

    SSLRequest and GSSENCRequest may each come once and are followed by another packet; a
    StartupMessage or CancelRequest ends the startup phase, after which ``next_packet`` returns
    None and whatever followed is left for ``take_rest`` (pipelined messages, a TLS ClientHello).
    """

    __slots__ = ("_buf", "_max_packet", "_ssl_seen", "_gss_seen", "_finished")

    def __init__(self, max_packet: int = MAX_STARTUP_PACKET) -> None:
        self._buf = bytearray()
        self._max_packet = max_packet
        self._ssl_seen = False
        self._gss_seen = False
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once a StartupMessage or CancelRequest has been returned."""
        return self._finished

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pending(self) -> int:
        return len(self._buf)

    def take_rest(self) -> bytes:
        """Return and forget the bytes buffered after the last packet handed out."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    def next_packet(self) -> SSLRequest | GSSENCRequest | CancelRequest | StartupMessage | None:
        """The next complete packet, or None when more bytes are needed (or the phase is over)."""
        buf = self._buf
        if self._finished or len(buf) < 4:
            return None
        length = _I32.unpack_from(buf)[0]
        if length < _MIN_STARTUP_PACKET or length > self._max_packet:
            raise ProtocolError(f"invalid length of startup packet: {length}")
        if len(buf) < length:
            return None
        packet = bytes(buf[4:length])
        del buf[:length]
        return self._accept(parse_startup_packet(packet))

    def _accept(self, packet: StartupPacket) -> StartupPacket:
        if isinstance(packet, SSLRequest):
            if self._ssl_seen:
                raise ProtocolError("duplicate SSLRequest")
            self._ssl_seen = True
        elif isinstance(packet, GSSENCRequest):
            if self._gss_seen:
                raise ProtocolError("duplicate GSSENCRequest")
            self._gss_seen = True
        else:
            self._finished = True
        return packet


class MessageReader:
    """Frames regular messages: 1 type byte, an Int32 length counting itself, then the body.

    Bytes are appended to one buffer and consumed by advancing an offset; the consumed prefix is
    dropped only now and then, so many small messages cost no per-message copying of the rest.
    """

    __slots__ = ("_buf", "_pos", "_max_message")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max_message = max_message

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pending(self) -> int:
        """Bytes buffered and not yet handed out."""
        return len(self._buf) - self._pos

    def take_rest(self) -> bytes:
        """Return and forget every byte not yet handed out (including a partial message)."""
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return rest

    def next_message(self) -> tuple[bytes, bytes] | None:
        """(type byte, body) of the next complete message, or None when more bytes are needed."""
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available < _HEADER:
            return None
        length = _I32.unpack_from(buf, pos + 1)[0]
        if length < 4 or length > self._max_message:
            raise ProtocolError(
                f"invalid message length {length} for message type {bytes(buf[pos : pos + 1])!r}"
            )
        end = pos + 1 + length
        if len(buf) < end:
            return None
        mtype = _TYPE_BYTES[buf[pos]]
        with memoryview(buf) as view:
            body = view[pos + _HEADER : end].tobytes()
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif end >= _COMPACT_AT:
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return mtype, body
