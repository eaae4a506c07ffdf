"""Startup-phase packets (no type byte): SSLRequest, GSSENCRequest, CancelRequest and
StartupMessage, and the parser for one packet once framing.StartupReader has cut it out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._body import U32, Body, frozen_mapping
from .errors import ProtocolError

# Startup-phase request codes: the "protocol version" field of a length-prefixed packet.
CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678
SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
PROTOCOL_MAJOR = 3
MIN_CANCEL_KEY = 4
MAX_CANCEL_KEY = 256  # protocol 3.2 allows variable-length keys up to 256 bytes


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: int  # unsigned; the first 4 key bytes
    secret_bytes: bytes = b""  # the whole key when longer than 4 bytes (protocol 3.2)

    @property
    def key(self) -> bytes:
        return self.secret_bytes or U32.pack(self.secret)


@dataclass(frozen=True, slots=True)
class StartupMessage:
    major: int
    minor: int
    params: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", frozen_mapping(self.params))

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    @property
    def database(self) -> str:
        # PostgreSQL connects to the database named like the user when none (or "") is given.
        return self.params.get("database") or self.user

    @property
    def options(self) -> str:
        return self.params.get("options", "")

    @property
    def unrecognized_options(self) -> list[str]:
        """Protocol extension options ('_pq_.*'), which a 3.0 server reports as unrecognized."""
        return [name for name in self.params if name.startswith("_pq_.")]


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Parse a startup-phase packet without its leading Int32 length."""
    body = Body(packet, "startup packet")
    code = body.uint32()
    if code == SSL_REQUEST_CODE:
        body.finish()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        body.finish()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        body.what = "CancelRequest"
        pid = body.uint32()
        key = body.rest()
        if not MIN_CANCEL_KEY <= len(key) <= MAX_CANCEL_KEY:
            raise ProtocolError(f"invalid length of cancel request packet: key of {len(key)} bytes")
        secret = U32.unpack_from(key)[0]
        return CancelRequest(pid, secret, key if len(key) > MIN_CANCEL_KEY else b"")
    major, minor = code >> 16, code & 0xFFFF
    if major != PROTOCOL_MAJOR:
        raise ProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 and later"
        )
    return StartupMessage(major, minor, _parse_startup_params(body.rest()))


def _parse_startup_params(data: bytes) -> dict[str, str]:
    # name\0value\0 ... \0 -- the packet must end with the lone terminator, as PostgreSQL insists.
    if not data or data[-1] != 0:
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    params: dict[str, str] = {}
    end = len(data) - 1
    pos = 0
    while pos < end:
        name_end = data.find(b"\0", pos, end)
        if name_end == pos:
            raise ProtocolError("invalid startup packet layout: empty parameter name")
        if name_end < 0:
            raise ProtocolError("invalid startup packet layout: parameter name without a value")
        value_end = data.find(b"\0", name_end + 1, end)
        if value_end < 0:
            raise ProtocolError("invalid startup packet layout: parameter without a value")
        name = data[pos:name_end].decode("utf-8", "surrogateescape")
        params[name] = data[name_end + 1 : value_end].decode("utf-8", "surrogateescape")
        pos = value_end + 1
    return params
