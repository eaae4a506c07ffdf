"""The bounds-checked cursor every body parser reads with, plus shared struct formats.
Any overrun or malformed field becomes a ProtocolError, never an IndexError or struct.error."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from .errors import ProtocolError

I16 = struct.Struct("!h")
U16 = struct.Struct("!H")
I32 = struct.Struct("!i")
U32 = struct.Struct("!I")


class Body:
    """A bounds-checked cursor over one message body; every overrun becomes a ProtocolError."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data if type(data) is bytes else bytes(data)
        self.pos = 0
        self.what = what

    def _take(self, size: int) -> int:
        start = self.pos
        if size < 0 or start + size > len(self.data):
            raise ProtocolError(f"{self.what} message is truncated")
        self.pos = start + size
        return start

    def byte(self) -> int:
        return self.data[self._take(1)]

    def int16(self) -> int:
        value: int = I16.unpack_from(self.data, self._take(2))[0]
        return value

    def uint16(self) -> int:
        value: int = U16.unpack_from(self.data, self._take(2))[0]
        return value

    def int32(self) -> int:
        value: int = I32.unpack_from(self.data, self._take(4))[0]
        return value

    def uint32(self) -> int:
        value: int = U32.unpack_from(self.data, self._take(4))[0]
        return value

    def raw(self, size: int) -> bytes:
        start = self._take(size)
        return self.data[start : start + size]

    def rest(self) -> bytes:
        return self.raw(len(self.data) - self.pos)

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError(f"{self.what} message has an unterminated string")
        text = self.data[self.pos : end].decode("utf-8", "surrogateescape")
        self.pos = end + 1
        return text

    def nullable(self) -> bytes | None:
        """An Int32 length (-1 for NULL) followed by that many bytes."""
        size = self.int32()
        if size == -1:
            return None
        if size < 0:
            raise ProtocolError(f"{self.what} message has a negative value length {size}")
        return self.raw(size)

    def int16_array(self) -> tuple[int, ...]:
        return tuple(self.int16() for _ in range(self.uint16()))

    def finish(self) -> None:
        extra = len(self.data) - self.pos
        if extra:
            raise ProtocolError(f"{self.what} message has {extra} unexpected trailing bytes")


def frozen_mapping(
    pairs: Mapping[str, str] | Iterable[tuple[str, str]],
) -> MappingProxyType[str, str]:
    """A read-only copy, so frozen message values really are immutable."""
    return MappingProxyType(dict(pairs))
