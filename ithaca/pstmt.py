"""Prepared statements in transaction pooling (pool_reserve_prepared_statement yes).

A client's named statements live in the client, keyed by its own names; on a server they are
prepared once under a pooler name derived from (query text, parameter types), shared by every
client that prepares the same text. Before a Bind or Describe reaches a server that lacks the
statement, its Parse is injected and the ParseComplete hidden. Responses the client expects but
the server is not asked for are produced by harmless stand-ins (a Close of a name that never
exists answers CloseComplete, turned into ParseComplete where a Parse was expected), so every
answer still arrives in PostgreSQL's order and errors skip to the next Sync as they would.

This relay parses client and server messages (it is not the hot path), so it is used only for
routes that ask for it."""

from __future__ import annotations

import hashlib
import re
from collections import deque
from dataclasses import dataclass

from .protocol import (
    MessageReader,
    ProtocolError,
    SqlState,
    build_close,
    build_error,
    build_parse,
    build_query,
    parse_backend,
)
from .relay import Relay
from .server import ServerConn

SERVER_PREFIX = "_ith_"
_NEVER_PREPARED = SERVER_PREFIX + "none"  # Close of this name is a no-op that answers '3'
_STAND_IN_CLOSE = build_close(b"S", _NEVER_PREPARED)
_PARSE_COMPLETE = b"1\x00\x00\x00\x04"

_DEALLOCATE_ALL = re.compile(r"^\s*(deallocate\s+(prepare\s+)?all|discard\s+all)\s*;?\s*$",
                             re.IGNORECASE)
_DEALLOCATE_ONE = re.compile(r'^\s*deallocate\s+(prepare\s+)?("(?:[^"]|"")+"|[^\s;]+)\s*;?\s*$',
                             re.IGNORECASE)
_SQL_PREPARE = re.compile(r"^\s*(prepare|execute)\s", re.IGNORECASE)
_REJECT_SQL_PREPARE = (
    "DO $ithaca$BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = "
    "'SQL PREPARE/EXECUTE is not supported in transaction pooling', HINT = 'use protocol-level "
    "prepared statements (Parse/Bind), which ithaca keeps across servers'; END$ithaca$"
)


@dataclass(frozen=True, slots=True)
class Statement:
    server_name: str
    parse_message: bytes  # the Parse to inject, already carrying server_name


def server_name_for(query: str, param_oids: tuple[int, ...]) -> str:
    digest = hashlib.blake2b(query.encode("utf-8", "surrogateescape")
                             + b"\0" + b",".join(str(o).encode() for o in param_oids),
                             digest_size=10).hexdigest()
    return SERVER_PREFIX + digest


# What the relay expects back for a message it sent, kept in send order. Only messages that
# answer with ParseComplete/CloseComplete/ReadyForQuery need an entry.
@dataclass(slots=True)
class _Expect:
    kind: str  # "parse" | "stand_in_parse" | "pass" | "duplicate" | "sync"
    client_name: str | None = None
    server_name: str | None = None
    hide: bool = False  # an injected Parse: its ParseComplete is not the client's
    on_success: str | None = None  # for "sync": "forget_all" or "forget:<name>"
    failed: bool = False


class PreparedRelay(Relay):
    """A transaction-pooling relay that keeps named prepared statements working."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.statements: dict[str, Statement] = {}
        self._client_reader = MessageReader(self.route.max_message)
        self._server_buffer = bytearray()
        self._expect: deque[_Expect] = deque()

    @property
    def server_state_known(self) -> bool:
        return not self._expect and not self._server_buffer

    # -- client -> server --------------------------------------------------------------------
    def forward_to_server(self, server: ServerConn, data: bytes) -> None:
        reader = self._client_reader
        reader.feed(data)
        out: list[bytes] = []
        try:
            while (message := reader.next_message()) is not None:
                self._translate(server, message[0], message[1], out)
        except ProtocolError as exc:
            self.fail(exc.message, exc.sqlstate)
            return
        except ValueError:  # a missing NUL terminator in a Parse/Bind/Describe/Close
            self.fail("malformed message from client", SqlState.PROTOCOL_VIOLATION)
            return
        if out:
            server.link.write(b"".join(out))

    def _translate(self, server: ServerConn, mtype: bytes, body: bytes, out: list[bytes]) -> None:
        if mtype == b"P":
            self._parse(server, body, out)
        elif mtype == b"B":
            self._translate_bind(server, body, out)
        elif mtype == b"D":
            self._describe(server, body, out)
        elif mtype == b"C":
            self._close(body, out)
        elif mtype == b"Q":
            self._query(body, out)
        else:
            out.append(_frame(mtype, body))
            if mtype in (b"S", b"F"):
                self._expect.append(_Expect("sync"))

    def _parse(self, server: ServerConn, body: bytes, out: list[bytes]) -> None:
        name, query, oids = _split_parse(body)
        if not name:
            out.append(_frame(b"P", body))
            self._expect.append(_Expect("pass"))
            return
        existing = self.statements.get(name)
        if existing is not None:
            # PostgreSQL's own 42P05: Parse the name's statement again where it exists.
            self._ensure(server, existing, out)
            out.append(existing.parse_message)
            self._expect.append(_Expect("duplicate", name, existing.server_name))
            return
        server_name = server_name_for(query, oids)
        statement = Statement(server_name, build_parse(server_name, query, oids))
        self.statements[name] = statement
        if server_name in server.prepared:
            out.append(_STAND_IN_CLOSE)
            self._expect.append(_Expect("stand_in_parse", name, server_name))
        else:
            server.prepared.add(server_name)
            out.append(statement.parse_message)
            self._expect.append(_Expect("parse", name, server_name))

    def _ensure(self, server: ServerConn, statement: Statement, out: list[bytes]) -> None:
        if statement.server_name not in server.prepared:
            server.prepared.add(statement.server_name)
            out.append(statement.parse_message)
            self._expect.append(_Expect("parse", None, statement.server_name, hide=True))

    def _translate_bind(self, server: ServerConn, body: bytes, out: list[bytes]) -> None:
        portal_end = body.index(b"\0")
        name_end = body.index(b"\0", portal_end + 1)
        name = body[portal_end + 1 : name_end].decode("utf-8", "surrogateescape")
        statement = self.statements.get(name) if name else None
        if statement is None:
            out.append(_frame(b"B", body))  # unnamed, or unknown: PostgreSQL answers 26000
            return
        self._ensure(server, statement, out)
        out.append(_frame(b"B", body[: portal_end + 1] + statement.server_name.encode()
                          + body[name_end:]))

    def _describe(self, server: ServerConn, body: bytes, out: list[bytes]) -> None:
        name = body[1:-1].decode("utf-8", "surrogateescape")
        statement = self.statements.get(name) if body[:1] == b"S" and name else None
        if statement is None:
            out.append(_frame(b"D", body))
            return
        self._ensure(server, statement, out)
        out.append(_frame(b"D", b"S" + statement.server_name.encode() + b"\0"))

    def _close(self, body: bytes, out: list[bytes]) -> None:
        name = body[1:-1].decode("utf-8", "surrogateescape")
        if body[:1] == b"S" and name:
            # Only this client's name goes; the shared server statement stays for others.
            self.statements.pop(name, None)
            out.append(_STAND_IN_CLOSE)
        else:
            out.append(_frame(b"C", body))
        self._expect.append(_Expect("pass"))

    def _query(self, body: bytes, out: list[bytes]) -> None:
        sql = body[:-1].decode("utf-8", "surrogateescape")
        expect = _Expect("sync")
        if _DEALLOCATE_ALL.match(sql):
            expect.on_success = "forget_all"
        elif (match := _DEALLOCATE_ONE.match(sql)) is not None:
            name = _unquote(match.group(2))
            if name in self.statements:
                # The shared statement cannot be dropped for one client alone; dropping all
                # of them on this server is safe (they are prepared again on demand).
                body = build_query("DEALLOCATE ALL")[5:]
                expect.on_success = "forget:" + name
        elif _SQL_PREPARE.match(sql):
            body = build_query(_REJECT_SQL_PREPARE)[5:]
        out.append(_frame(b"Q", body))
        self._expect.append(expect)

    def sync_ignored(self) -> None:
        for index in range(len(self._expect) - 1, -1, -1):
            if self._expect[index].kind == "sync":
                del self._expect[index]
                return

    # -- server -> client --------------------------------------------------------------------
    def deliver(self, data: bytes) -> None:
        buffer = self._server_buffer
        buffer += data
        out: list[bytes | bytearray] = []
        start = pos = 0
        size = len(buffer)
        while pos + 5 <= size:
            mtype = buffer[pos]
            end = pos + 1 + int.from_bytes(buffer[pos + 1 : pos + 5], "big")
            if end > size:
                break
            if mtype in _WATCHED:
                replacement = self._on_reply(mtype, buffer, pos, end)
                if replacement is not None:
                    out.append(buffer[start:pos])
                    out.append(replacement)
                    start = end
            pos = end
        out.append(buffer[start:pos])
        del buffer[:pos]
        self.client.write(b"".join(out))

    def _on_reply(self, mtype: int, buffer: bytearray, pos: int, end: int) -> bytes | None:
        expect = self._expect
        if mtype == _READY:
            while expect and expect[0].kind != "sync":
                self._failed(expect.popleft())  # skipped after an error
            if expect:
                self._synced(expect.popleft())
            return None
        if mtype == _ERROR:
            return self._on_error(bytes(buffer[pos + 5 : end]))
        if not expect or expect[0].kind == "sync":
            self.log.warning("unexpected %r from server", chr(mtype))
            return None
        entry = expect.popleft()
        if entry.kind == "stand_in_parse":
            return _PARSE_COMPLETE
        if entry.hide:
            return b""
        return None

    def _on_error(self, body: bytes) -> bytes | None:
        expect = self._expect
        replacement = None
        if expect and expect[0].kind == "duplicate":
            error = parse_backend(b"E", body)
            if getattr(error, "sqlstate", None) == SqlState.DUPLICATE_PREPARED_STATEMENT:
                replacement = build_error(
                    SqlState.DUPLICATE_PREPARED_STATEMENT,
                    f'prepared statement "{expect[0].client_name}" already exists')
        while expect and expect[0].kind != "sync":
            self._failed(expect.popleft())
        if expect:
            expect[0].failed = True
        return replacement

    def _failed(self, entry: _Expect) -> None:
        """A Parse the server rejected or skipped: neither it nor the client has it."""
        if entry.kind == "parse" and entry.server_name is not None:
            server = self.server
            if server is not None:
                server.prepared.discard(entry.server_name)
            name = entry.client_name
            if name is not None and not entry.hide:
                statement = self.statements.get(name)
                if statement is not None and statement.server_name == entry.server_name:
                    del self.statements[name]
        elif entry.kind == "stand_in_parse" and entry.client_name is not None:
            self.statements.pop(entry.client_name, None)

    def _synced(self, entry: _Expect) -> None:
        if entry.failed or entry.on_success is None:
            return
        server = self.server
        if server is not None:
            server.prepared.clear()
        if entry.on_success == "forget_all":
            self.statements.clear()
        else:
            self.statements.pop(entry.on_success.removeprefix("forget:"), None)


_READY = ord("Z")
_ERROR = ord("E")
_WATCHED = frozenset(b"13ZE")  # ParseComplete, CloseComplete, ReadyForQuery, ErrorResponse


def _frame(mtype: bytes, body: bytes) -> bytes:
    return mtype + (len(body) + 4).to_bytes(4, "big") + body


def _split_parse(body: bytes) -> tuple[str, str, tuple[int, ...]]:
    name_end = body.index(b"\0")
    query_end = body.index(b"\0", name_end + 1)
    count = int.from_bytes(body[query_end + 1 : query_end + 3], "big")
    oids_at = query_end + 3
    if len(body) != oids_at + 4 * count:
        raise ProtocolError("malformed Parse message")
    oids = tuple(int.from_bytes(body[oids_at + 4 * i : oids_at + 4 * i + 4], "big")
                 for i in range(count))
    return (body[:name_end].decode("utf-8", "surrogateescape"),
            body[name_end + 1 : query_end].decode("utf-8", "surrogateescape"), oids)


def _unquote(name: str) -> str:
    if name.startswith('"') and name.endswith('"'):
        return name[1:-1].replace('""', '"')
    return name.lower()
