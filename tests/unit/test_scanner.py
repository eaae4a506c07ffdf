"""The relay's frame scanners: the same verdict whether a stream arrives whole, byte by byte
or in random cuts; bad lengths and unknown client messages raise ProtocolError."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ithaca.protocol import (
    ProtocolError,
    build_bind,
    build_command_complete,
    build_data_row,
    build_describe,
    build_execute,
    build_flush,
    build_parameter_status,
    build_parse,
    build_query,
    build_ready_for_query,
    build_row_description,
    build_sync,
    build_terminate,
)
from ithaca.protocol.scanner import ClientScanner, ServerScanner


def _client_feed(chunks: list[bytes]) -> tuple[int, bool, list[int]]:
    scanner = ClientScanner(1 << 20)
    syncs = 0
    terminates = []
    offset = 0
    for chunk in chunks:
        scanner.scan(chunk)
        syncs += scanner.sync_points
        if scanner.terminate_at >= 0:
            terminates.append(offset + scanner.terminate_at)
        offset += len(chunk)
    return syncs, scanner.in_group, terminates


def _server_feed(chunks: list[bytes]) -> tuple[int, bytes, list[bytes], bool]:
    scanner = ServerScanner()
    ready = 0
    params: list[bytes] = []
    for chunk in chunks:
        scanner.scan(chunk)
        ready += scanner.ready_count
        params += scanner.params
    return ready, scanner.status, params, scanner.at_boundary


def _cuts(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, 9)
        chunks.append(data[pos : pos + step])
        pos += step
    return chunks


CLIENT_STREAM = (
    build_query("SELECT 1")
    + build_parse("s1", "SELECT $1", (23,)) + build_bind("", "s1", (b"1",))
    + build_describe(b"P", "") + build_execute() + build_sync() + build_flush()
    + build_parse("", "SELECT 2") + build_flush()
)

SERVER_STREAM = (
    build_row_description(["a"]) + build_data_row([b"1"]) + build_command_complete("SELECT 1")
    + build_ready_for_query(b"I")
    + build_parameter_status("TimeZone", "Asia/Tokyo")
    + build_data_row([b"x" * 300]) + build_ready_for_query(b"T")
)


def test_client_stream_whole_bytewise_and_cut():
    whole = _client_feed([CLIENT_STREAM])
    assert whole == (2, True, [])
    assert _client_feed([bytes([b]) for b in CLIENT_STREAM]) == whole
    rng = random.Random(7)
    for _ in range(50):
        assert _client_feed(_cuts(CLIENT_STREAM, rng)) == whole


def test_flush_after_sync_closes_no_group():
    assert _client_feed([build_query("x") + build_sync() + build_flush()]) == (2, False, [])


def test_terminate_position_is_reported():
    stream = build_query("SELECT 1") + build_terminate()
    assert _client_feed([stream]) == (1, False, [len(build_query("SELECT 1"))])


def test_server_stream_whole_bytewise_and_cut():
    whole = _server_feed([SERVER_STREAM])
    assert whole == (2, b"T", [b"TimeZone\0Asia/Tokyo\0"], True)
    assert _server_feed([bytes([b]) for b in SERVER_STREAM]) == whole
    rng = random.Random(11)
    for _ in range(50):
        assert _server_feed(_cuts(SERVER_STREAM, rng)) == whole


@pytest.mark.parametrize("bad", [b"Q\x00\x00\x00\x03", b"Q\x7f\xff\xff\xff", b"?\x00\x00\x00\x04"])
def test_client_protocol_errors(bad):
    with pytest.raises(ProtocolError) as info:
        ClientScanner(1 << 20).scan(bad)
    assert info.value.sqlstate == "08P01"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=20))
def test_client_scanner_garbage_parses_or_raises(data, step):
    scanner = ClientScanner(1 << 16)
    try:
        for pos in range(0, len(data), step):
            scanner.scan(data[pos : pos + step])
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=20))
def test_server_scanner_garbage_parses_or_raises(data, step):
    scanner = ServerScanner()
    try:
        for pos in range(0, len(data), step):
            scanner.scan(data[pos : pos + step])
    except ProtocolError:
        pass
