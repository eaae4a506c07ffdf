"""Frame scanners for the relay's hot path: walk type byte + length headers across chunk
boundaries and report only what the relay needs, without building an object per message."""

from __future__ import annotations

from .errors import ProtocolError

# Client messages that ask the server for a ReadyForQuery: 'Q' Query, 'S' Sync, 'F' FunctionCall.
_SYNC_POINTS = frozenset(b"QSF")
# Client messages that open an extended-protocol group that waits for its Sync. A Flush
# ('H') does not: psycopg sends one after every Sync, and a group it follows is open anyway.
_GROUP_MEMBERS = frozenset(b"PBDEC")
_PASSIVE = frozenset(b"dcfH")  # copy data/done/fail and Flush: no group change
_TERMINATE = ord("X")
_READY = ord("Z")
# Server messages that start copy-in mode: 'G' CopyInResponse, 'W' CopyBothResponse.
_COPY_IN = frozenset(b"GW")
_PARAMETER_STATUS = ord("S")
_COMMAND_COMPLETE = ord("C")
_LISTEN_TAGS = frozenset({b"LI", b"UN"})


class _FrameWalker:
    """Where the last chunk left off: body bytes still to skip, or a cut 5-byte header."""

    __slots__ = ("_skip", "_head")

    def __init__(self) -> None:
        self._skip = 0  # body bytes of the current message still to come
        self._head = b""  # a partial 5-byte header carried over from the last chunk

    def _complete_head(self, data: bytes) -> bytes | None:
        """The carried header completed from `data`, or None when `data` is too short too."""
        need = 5 - len(self._head)
        if len(data) < need:
            self._head += data
            return None
        header = self._head + data[:need]
        self._head = b""
        return header

    def _stop_at(self, pos: int, data: bytes) -> None:
        """Remember where the next chunk starts: inside a body, or inside a header."""
        if pos < len(data):
            self._head = data[pos:]
            self._skip = 0
        else:
            self._skip = pos - len(data)


class ClientScanner(_FrameWalker):
    """Tracks what the client has asked for: sync points sent, an open extended group,
    and where a Terminate ('X') starts, so the relay can stop before it."""

    __slots__ = ("max_message", "sync_points", "in_group", "terminate_at", "last_sync")

    def __init__(self, max_message: int) -> None:
        super().__init__()
        self.max_message = max_message
        self.sync_points = 0  # sync points seen in the last scanned chunk
        self.in_group = False  # extended messages sent since the last Sync
        self.terminate_at = -1  # offset of 'X' in the last scanned chunk, or -1
        self.last_sync = 0  # type byte of the last sync point sent

    @property
    def at_boundary(self) -> bool:
        return self._skip == 0 and not self._head

    def scan(self, data: bytes) -> None:
        """Scan one chunk; results are left in sync_points, in_group and terminate_at."""
        syncs = 0
        self.terminate_at = -1
        pos = self._skip
        end = len(data)
        if self._head:
            need = 5 - len(self._head)
            header = self._complete_head(data)
            if header is None:
                self.sync_points = 0
                return
            length = int.from_bytes(header[1:5], "big")
            syncs += self._header(header[0], length, -1)
            pos = need + length - 4
        while pos + 5 <= end:
            mtype = data[pos]
            length = int.from_bytes(data[pos + 1 : pos + 5], "big")
            syncs += self._header(mtype, length, pos)
            pos += 1 + length
        self._stop_at(pos, data)
        self.sync_points = syncs

    def _header(self, mtype: int, length: int, pos: int) -> int:
        if length < 4 or length > self.max_message:
            raise ProtocolError(f"invalid message length {length} for message type {mtype!r}")
        if mtype in _SYNC_POINTS:
            self.in_group = False
            self.last_sync = mtype
            return 1
        if mtype in _GROUP_MEMBERS:
            self.in_group = True
        elif mtype == _TERMINATE:
            self.terminate_at = max(pos, 0)
        elif mtype not in _PASSIVE:
            raise ProtocolError(f"unexpected message type {chr(mtype)!r} from client")
        return 0


class ServerScanner(_FrameWalker):
    """Counts ReadyForQuery ('Z') messages from the server and keeps the last
    transaction status byte; also notes copy-in mode starting."""

    __slots__ = ("_want_status", "_param_part", "ready_count", "status", "copy_in", "params",
                 "listen")

    def __init__(self) -> None:
        super().__init__()
        self._want_status = False  # the last header was 'Z' and its status byte is in the next chunk
        self._param_part: bytearray | None = None  # a ParameterStatus body cut by the chunk end
        self.ready_count = 0  # 'Z' seen in the last scanned chunk
        self.status = b"I"
        self.copy_in = False  # a 'G'/'W' was seen in the last chunk
        self.params: list[bytes] = []  # 'S' ParameterStatus bodies completed in the last chunk
        self.listen = 0  # last chunk completed a LISTEN (1) or an UNLISTEN (-1)

    @property
    def at_boundary(self) -> bool:
        return self._skip == 0 and not self._head and not self._want_status

    def scan(self, data: bytes) -> None:
        ready = 0
        self.copy_in = False
        self.listen = 0
        if self.params:
            self.params = []
        end = len(data)
        pos = self._skip
        if self._want_status and end:
            self.status = data[0:1]
            self._want_status = False
        if self._param_part is not None:
            self._param_part += data[: min(pos, end)]
            if pos <= end:
                self.params.append(bytes(self._param_part))
                self._param_part = None
        if self._head:
            need = 5 - len(self._head)
            header = self._complete_head(data)
            if header is None:
                self.ready_count = 0
                return
            ready += self._carried_header(header, data, need)
            pos = need + int.from_bytes(header[1:5], "big") - 4
        while pos + 5 <= end:
            mtype = data[pos]
            length = int.from_bytes(data[pos + 1 : pos + 5], "big")
            if length < 4:
                raise ProtocolError(f"invalid message length {length} from server")
            if mtype == _READY:
                ready += 1
                if pos + 5 < end:
                    self.status = data[pos + 5 : pos + 6]
                else:
                    self._want_status = True
            elif mtype in _COPY_IN:
                self.copy_in = True
            elif mtype == _PARAMETER_STATUS:
                self._note_param(data, pos + 5, pos + 1 + length)
            elif mtype == _COMMAND_COMPLETE and data[pos + 5 : pos + 7] in _LISTEN_TAGS:
                tag = data[pos + 5 : pos + 14]
                if tag.startswith(b"LISTEN\0"):
                    self.listen = 1
                elif tag.startswith(b"UNLISTEN\0"):
                    self.listen = -1
            pos += 1 + length
        self._stop_at(pos, data)
        self.ready_count = ready

    def _note_param(self, data: bytes, start: int, stop: int) -> None:
        if stop <= len(data):
            self.params.append(data[start:stop])
        else:
            self._param_part = bytearray(data[start:])

    def _carried_header(self, header: bytes, data: bytes, body_at: int) -> int:
        length = int.from_bytes(header[1:5], "big")
        if length < 4:
            raise ProtocolError(f"invalid message length {length} from server")
        mtype = header[0]
        if mtype in _COPY_IN:
            self.copy_in = True
        elif mtype == _PARAMETER_STATUS:
            self._note_param(data, body_at, body_at + length - 4)
        if mtype != _READY:
            return 0
        if body_at < len(data):
            self.status = data[body_at : body_at + 1]
        else:
            self._want_status = True
        return 1
