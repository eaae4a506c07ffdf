"""Bad input from clients: garbage and oversized startup packets, wrong protocol versions,
clients that close mid-message or never speak. Each gets an 08P01 ErrorResponse or a closed
socket; the process and other clients are unaffected; no server connection is left dirty."""

from __future__ import annotations

import socket
import struct
import time

import psycopg
import pytest
from helpers import backend_count, wait_until


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def _read_all(sock: socket.socket, limit: float = 5.0) -> bytes:
    """Read until the peer closes (bounded by time and size)."""
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and len(data) < 1 << 16:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def _error_fields(data: bytes) -> dict[str, str]:
    assert data[:1] == b"E", f"expected an ErrorResponse, got {data[:20]!r}"
    length = struct.unpack("!I", data[1:5])[0]
    fields = {}
    for part in data[5 : 1 + length].split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return fields


def _startup(params: dict[str, str], version: int = 196608) -> bytes:
    body = struct.pack("!I", version)
    for key, value in params.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def _wait_ready(sock: socket.socket) -> None:
    """Read until the login's ReadyForQuery (bounded in time)."""
    deadline = time.monotonic() + 5
    buf = b""
    while b"Z\x00\x00\x00\x05I" not in buf and time.monotonic() < deadline:
        buf += sock.recv(4096)
    assert b"Z\x00\x00\x00\x05I" in buf, f"no ReadyForQuery after login: {buf[:80]!r}"


def _login(sock: socket.socket) -> None:
    sock.sendall(_startup({"user": "postgres", "database": "postgres"}))
    _wait_ready(sock)


@pytest.fixture
def pooler(ithaca, ithaca_config):
    return ithaca(ithaca_config(pool="transaction", pool_size=1))


def _still_serves(proc) -> None:
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 'alive'").fetchone() == ("alive",)


BAD_STARTUPS = {
    "garbage": b"\x00\x00\x00\x10garbage-garbage!",
    "short_length": struct.pack("!I", 4) + b"\x00" * 8,
    "oversized_length": struct.pack("!II", 0x7FFFFFFF, 196608),
    "unknown_request_code": struct.pack("!II", 8, 12345678),
    "protocol_2": _startup({"user": "postgres"}, version=2 << 16),
    "protocol_4": _startup({"user": "postgres"}, version=4 << 16),
    "missing_terminator": struct.pack("!II", 8 + 5, 196608) + b"user\0",
    "http_request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_STARTUPS))
def test_bad_startup_gets_protocol_error(pooler, name):
    with _raw(pooler.port) as sock:
        sock.sendall(BAD_STARTUPS[name])
        reply = _read_all(sock)
    if reply:  # an ErrorResponse with 08P01, then the socket closes
        fields = _error_fields(reply)
        assert fields["C"] in ("08P01", "0A000"), fields
        assert fields["S"] == "FATAL"
    _still_serves(pooler)


def test_ssl_request_answered_n_without_tls(pooler):
    with _raw(pooler.port) as sock:
        sock.sendall(struct.pack("!II", 8, 80877103))
        assert sock.recv(1) == b"N"
        # the plaintext startup continues on the same socket
        sock.sendall(_startup({"user": "postgres", "database": "postgres"}))
        reply = sock.recv(1 << 16)
        assert reply[:1] == b"R"


def test_client_closing_mid_startup_and_mid_message(pg, pooler):
    for payload in (_startup({"user": "postgres"})[:7],  # half a startup packet
                    _startup({"user": "postgres", "database": "postgres"})):
        with _raw(pooler.port) as sock:
            sock.sendall(payload)
            if len(payload) > 7:
                # logged in: now send half a Query message and vanish
                _wait_ready(sock)
                sock.sendall(b"Q\x00\x00\x00\x20SELECT ")
    _still_serves(pooler)
    wait_until(lambda: pg.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE state <> 'idle' "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()") == "0",
        message="no busy backend left")


def test_oversized_message_after_login(pg, pooler):
    with _raw(pooler.port) as sock:
        _login(sock)
        sock.sendall(b"Q" + struct.pack("!I", 0x7FFFFFF0) + b"SELECT 1")
        reply = _read_all(sock)
    fields = _error_fields(reply)
    assert fields["C"] == "08P01"
    _still_serves(pooler)
    assert backend_count(pg, usename="postgres") <= 1


def test_unknown_message_type_after_login(pooler):
    with _raw(pooler.port) as sock:
        _login(sock)
        sock.sendall(b"\x01\x00\x00\x00\x04")
        reply = _read_all(sock)
    assert _error_fields(reply)["C"] == "08P01"
    _still_serves(pooler)


def test_client_that_never_speaks_is_dropped(ithaca, ithaca_config):
    text = ithaca_config(pool="transaction", pool_size=1).replace(
        "\tport ", "\tclient_login_timeout 500\n\tport ", 1)
    proc = ithaca(text)
    started = time.monotonic()
    with _raw(proc.port) as sock:
        reply = _read_all(sock, limit=5)
    assert time.monotonic() - started < 4
    if reply:
        assert _error_fields(reply)["S"] == "FATAL"
    _still_serves(proc)


def test_many_garbage_clients_do_not_harm_a_working_one(pooler):
    with psycopg.connect(pooler.dsn(), autocommit=True) as good:
        for i in range(30):
            with _raw(pooler.port) as sock:
                sock.sendall(bytes((i * 37 + k) % 256 for k in range(64)))
                _read_all(sock, limit=2)
            assert good.execute("SELECT %s::int", (i,)).fetchone() == (i,)
