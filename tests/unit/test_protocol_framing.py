"""StartupReader and MessageReader: whole, byte by byte, with more bytes behind, and bad lengths."""

from __future__ import annotations

import struct

import pytest

from ithaca.protocol import (
    DEFAULT_MAX_MESSAGE,
    MAX_STARTUP_PACKET,
    CancelRequest,
    GSSENCRequest,
    MessageReader,
    ProtocolError,
    SSLRequest,
    StartupMessage,
    StartupReader,
    build_cancel_request,
    build_query,
    build_ready_for_query,
    build_ssl_request,
    build_startup,
    build_sync,
)
from ithaca.protocol.build import build_gssenc_request

STARTUP = build_startup({"user": "alice", "database": "app", "options": "-c x=1"})


def packet(body: bytes) -> bytes:
    return struct.pack("!i", len(body) + 4) + body


def read_all_startup(data: bytes, *, chunk: int | None = None) -> tuple[list[object], bytes]:
    reader = StartupReader()
    packets: list[object] = []
    step = chunk or len(data) or 1
    for start in range(0, len(data), step):
        reader.feed(data[start : start + step])
        while (found := reader.next_packet()) is not None:
            packets.append(found)
    return packets, reader.take_rest()


def assert_08p01(call) -> None:
    with pytest.raises(ProtocolError) as info:
        call()
    assert info.value.sqlstate == "08P01"


# ---------------------------------------------------------------- StartupReader


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_startup_message_whole_and_byte_by_byte(chunk: int | None) -> None:
    packets, rest = read_all_startup(STARTUP, chunk=chunk)
    assert packets == [
        StartupMessage(3, 0, {"user": "alice", "database": "app", "options": "-c x=1"})
    ]
    assert rest == b""


def test_startup_message_properties() -> None:
    (message,), _ = read_all_startup(
        build_startup({"user": "bob", "database": "", "_pq_.ext": "on"}, minor=2)
    )
    assert (message.major, message.minor) == (3, 2)
    assert message.user == "bob" and message.database == "bob" and message.options == ""
    assert message.unrecognized_options == ["_pq_.ext"]
    with pytest.raises(TypeError):
        message.params["user"] = "mallory"  # type: ignore[index]
    with pytest.raises(AttributeError):
        message.minor = 0  # type: ignore[misc]
    assert StartupMessage(3, 0, {}).user == "" and StartupMessage(3, 0, {}).database == ""


def test_ssl_then_startup_in_one_feed() -> None:
    packets, rest = read_all_startup(build_ssl_request() + STARTUP)
    assert [type(p) for p in packets] == [SSLRequest, StartupMessage]
    assert rest == b""


def test_gssenc_then_ssl_then_startup() -> None:
    packets, _ = read_all_startup(build_gssenc_request() + build_ssl_request() + STARTUP, chunk=1)
    assert [type(p) for p in packets] == [GSSENCRequest, SSLRequest, StartupMessage]


def test_bytes_after_the_startup_message_are_left_for_take_rest() -> None:
    pipelined = build_query("SELECT 1") + b"garbage"
    reader = StartupReader()
    reader.feed(STARTUP + pipelined)
    assert isinstance(reader.next_packet(), StartupMessage)
    assert reader.finished
    assert reader.next_packet() is None
    assert reader.pending() == len(pipelined)
    assert reader.take_rest() == pipelined
    assert reader.pending() == 0 and reader.take_rest() == b""


def test_tls_client_hello_after_ssl_request_is_left_buffered() -> None:
    reader = StartupReader()
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"
    reader.feed(build_ssl_request() + hello)
    assert reader.next_packet() == SSLRequest()
    assert reader.take_rest() == hello


def test_cancel_request() -> None:
    packets, rest = read_all_startup(build_cancel_request(1234, 0xDEADBEEF) + b"x")
    assert packets == [CancelRequest(1234, 0xDEADBEEF)]
    assert rest == b"x"
    long_key = bytes(range(1, 33))
    (cancel,), _ = read_all_startup(build_cancel_request(7, long_key))
    assert cancel.secret_bytes == long_key and cancel.key == long_key and cancel.pid == 7
    assert cancel.secret == 0x01020304


BAD_STARTUP = {
    "short length": b"\0\0\0\x07\0\0\0\0",
    "zero length": b"\0\0\0\0",
    "negative length": b"\xff\xff\xff\xff",
    "oversized length": struct.pack("!i", MAX_STARTUP_PACKET + 1),
    "unknown request code": packet(struct.pack("!i", 1234 << 16 | 5681)),
    "protocol 2": packet(struct.pack("!i", 2 << 16) + b"user\0a\0\0"),
    "protocol 4": packet(struct.pack("!i", 4 << 16) + b"user\0a\0\0"),
    "missing terminator": packet(b"\0\x03\0\0user\0alice\0"),
    "no parameters at all": packet(b"\0\x03\0\0"),
    "key without value": packet(b"\0\x03\0\0user\0\0"),
    "key without value before terminator": packet(b"\0\x03\0\0user\0alice\0database\0"),
    "empty parameter name": packet(b"\0\x03\0\0\0alice\0\0"),
    "bytes after terminator": packet(b"\0\x03\0\0user\0a\0\0x\0"),
    "ssl request with extra bytes": packet(struct.pack("!i", 80877103) + b"\0"),
    "cancel with short key": packet(struct.pack("!ii", 80877102, 1) + b"abc"),
    "cancel without key": packet(struct.pack("!ii", 80877102, 1)),
    "cancel with oversized key": packet(struct.pack("!ii", 80877102, 1) + b"k" * 257),
    "duplicate ssl request": build_ssl_request() + build_ssl_request(),
    "duplicate gssenc request": build_gssenc_request() + build_gssenc_request(),
}


@pytest.mark.parametrize("data", BAD_STARTUP.values(), ids=BAD_STARTUP.keys())
@pytest.mark.parametrize("chunk", [None, 1])
def test_bad_startup_packets_raise_08p01(data: bytes, chunk: int | None) -> None:
    assert_08p01(lambda: read_all_startup(data, chunk=chunk))


def test_oversized_startup_length_fails_before_the_body_arrives() -> None:
    reader = StartupReader()
    reader.feed(struct.pack("!i", 1 << 30))
    assert_08p01(reader.next_packet)


def test_startup_reader_custom_max_packet() -> None:
    reader = StartupReader(max_packet=16)
    reader.feed(STARTUP)
    assert_08p01(reader.next_packet)


def test_partial_startup_returns_none() -> None:
    reader = StartupReader()
    for size in range(len(STARTUP)):
        reader = StartupReader()
        reader.feed(STARTUP[:size])
        assert reader.next_packet() is None


# ---------------------------------------------------------------- MessageReader


def read_all_messages(
    data: bytes, *, chunk: int | None = None, reader: MessageReader | None = None
) -> list[tuple[bytes, bytes]]:
    reader = reader or MessageReader()
    frames = []
    step = chunk or len(data) or 1
    for start in range(0, len(data), step):
        reader.feed(data[start : start + step])
        while (frame := reader.next_message()) is not None:
            frames.append(frame)
    return frames


STREAM = build_query("SELECT 1") + build_sync() + build_ready_for_query(b"I")
FRAMES = [(b"Q", b"SELECT 1\0"), (b"S", b""), (b"Z", b"I")]


@pytest.mark.parametrize("chunk", [None, 1, 2, 5, 7])
def test_message_reader_chunking(chunk: int | None) -> None:
    assert read_all_messages(STREAM, chunk=chunk) == FRAMES


def test_message_reader_keeps_trailing_partial_message() -> None:
    reader = MessageReader()
    tail = b"Q\0\0\0\x10SEL"
    reader.feed(STREAM + tail)
    frames = []
    while (frame := reader.next_message()) is not None:
        frames.append(frame)
    assert frames == FRAMES
    assert reader.pending() == len(tail)
    assert reader.take_rest() == tail
    assert reader.pending() == 0 and reader.next_message() is None


def test_message_reader_types_are_bytes() -> None:
    ((mtype, body),) = read_all_messages(build_sync())
    assert type(mtype) is bytes and type(body) is bytes


@pytest.mark.parametrize(
    "header",
    [b"Q\0\0\0\x03", b"Q\0\0\0\0", b"Q\xff\xff\xff\xff", b"Q\x80\0\0\0", b"Q\x7f\xff\xff\xff"],
)
def test_message_reader_bad_lengths(header: bytes) -> None:
    reader = MessageReader()
    reader.feed(header)
    assert_08p01(reader.next_message)
    assert_08p01(reader.next_message)  # the error is sticky, not skipped over


def test_message_reader_custom_max() -> None:
    reader = MessageReader(max_message=8)
    reader.feed(b"Q\0\0\0\x08abc\0")
    assert reader.next_message() == (b"Q", b"abc\0")
    reader.feed(b"Q\0\0\0\x09")
    assert_08p01(reader.next_message)
    assert DEFAULT_MAX_MESSAGE == 1 << 30


def test_message_reader_big_body_in_chunks() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    message = b"d" + struct.pack("!i", len(body) + 4) + body
    frames = read_all_messages(message + build_sync(), chunk=65536)
    assert frames == [(b"d", body), (b"S", b"")]


def test_message_reader_many_small_messages_compacts() -> None:
    count = 50_000
    reader = MessageReader()
    reader.feed(build_sync() * count + b"S\0\0")
    seen = 0
    while reader.next_message() is not None:
        seen += 1
    assert seen == count
    assert reader.pending() == 3
    reader.feed(b"\0\x04")
    assert reader.next_message() == (b"S", b"")
    assert reader.pending() == 0
