"""Hypothesis fuzzing of the wire codec: arbitrary bytes parse or raise ProtocolError, nothing else,
and every builder's output parses back to the values it was built from."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ithaca.protocol import (
    BackendKeyData,
    Bind,
    CancelRequest,
    DataRow,
    MessageReader,
    NegotiateProtocolVersion,
    ParameterStatus,
    Parse,
    ProtocolError,
    Query,
    StartupMessage,
    StartupReader,
    build_backend_key_data,
    build_bind,
    build_cancel_request,
    build_data_row,
    build_error,
    build_negotiate_protocol_version,
    build_parameter_status,
    build_parse,
    build_query,
    build_startup,
    parse_backend,
    parse_frontend,
    parse_password,
    parse_sasl_initial_response,
)

FUZZ = settings(max_examples=300, deadline=None)

# Text without NUL: ordinary unicode, or arbitrary bytes decoded the way the codec decodes them
# (undecodable bytes become lone surrogates and must survive the round trip).
wire_text = st.one_of(
    st.text(
        alphabet=st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=40
    ),
    st.binary(max_size=40)
    .map(lambda raw: raw.replace(b"\0", b""))
    .map(lambda raw: raw.decode("utf-8", "surrogateescape")),
)
names = wire_text.filter(bool)
int16s = st.integers(-(1 << 15), (1 << 15) - 1)
uint32s = st.integers(0, (1 << 32) - 1)
values = st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=8)


def frame(mtype: bytes, body: bytes) -> bytes:
    return mtype + struct.pack("!i", len(body) + 4) + body


def drain_messages(data: bytes, chunk: int, parse) -> None:
    reader = MessageReader(max_message=1 << 16)
    try:
        for start in range(0, len(data), chunk):
            reader.feed(data[start : start + chunk])
            while (found := reader.next_message()) is not None:
                parse(*found)
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=300), st.integers(1, 64))
def test_startup_reader_parses_or_raises_protocol_error(data: bytes, chunk: int) -> None:
    reader = StartupReader()
    try:
        for start in range(0, len(data), chunk):
            reader.feed(data[start : start + chunk])
            while reader.next_packet() is not None:
                pass
    except ProtocolError:
        pass


@FUZZ
@given(st.dictionaries(names, wire_text, max_size=4), st.binary(max_size=40), st.integers(0, 40))
def test_startup_reader_mutated_packets(params: dict[str, str], junk: bytes, cut: int) -> None:
    packet = build_startup(params)
    mutated = packet[: cut % len(packet)] + junk + packet[cut % len(packet) :]
    reader = StartupReader()
    reader.feed(mutated)
    try:
        while reader.next_packet() is not None:
            pass
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=300), st.integers(1, 64))
def test_backend_stream_parses_or_raises_protocol_error(data: bytes, chunk: int) -> None:
    drain_messages(data, chunk, parse_backend)


@FUZZ
@given(st.binary(max_size=300), st.integers(1, 64))
def test_frontend_stream_parses_or_raises_protocol_error(data: bytes, chunk: int) -> None:
    drain_messages(data, chunk, parse_frontend)


backend_types = st.sampled_from(list(b"RSKZENCTDIG12HWdcAvVnst3"))
frontend_types = st.sampled_from(list(b"QPBDECSHXdcfFp"))


@FUZZ
@given(backend_types, st.binary(max_size=120))
def test_backend_bodies_parse_or_raise(mtype: int, body: bytes) -> None:
    try:
        parse_backend(bytes([mtype]), body)
    except ProtocolError:
        pass


@FUZZ
@given(frontend_types, st.binary(max_size=120))
def test_frontend_bodies_parse_or_raise(mtype: int, body: bytes) -> None:
    try:
        parse_frontend(bytes([mtype]), body)
    except ProtocolError:
        pass
    for parse in (parse_password, parse_sasl_initial_response):
        try:
            parse(body)
        except ProtocolError:
            pass


def single(message: bytes) -> tuple[bytes, bytes]:
    reader = MessageReader()
    reader.feed(message)
    found = reader.next_message()
    assert found is not None and reader.pending() == 0
    return found


@FUZZ
@given(st.dictionaries(names, wire_text, max_size=6), st.integers(0, 0xFFFF))
def test_startup_round_trip(params: dict[str, str], minor: int) -> None:
    reader = StartupReader()
    reader.feed(build_startup(params, minor=minor))
    assert reader.next_packet() == StartupMessage(3, minor, params)


@FUZZ
@given(uint32s, st.one_of(uint32s, st.binary(min_size=4, max_size=256)))
def test_cancel_and_key_data_round_trip(pid: int, secret: int | bytes) -> None:
    reader = StartupReader()
    reader.feed(build_cancel_request(pid, secret))
    cancel = reader.next_packet()
    key_data = parse_backend(*single(build_backend_key_data(pid, secret)))
    expected_key = secret if isinstance(secret, bytes) else struct.pack("!I", secret)
    assert isinstance(cancel, CancelRequest) and isinstance(key_data, BackendKeyData)
    assert cancel.pid == key_data.pid == pid
    assert cancel.key == key_data.key == expected_key


@FUZZ
@given(
    st.text(max_size=20).filter(lambda s: "\0" not in s),
    wire_text,
    st.one_of(st.none(), wire_text),
    st.one_of(st.none(), wire_text),
)
def test_error_round_trip(
    sqlstate: str, message: str, detail: str | None, hint: str | None
) -> None:
    parsed = parse_backend(*single(build_error(sqlstate, message, detail=detail, hint=hint)))
    assert (parsed.sqlstate, parsed.message, parsed.detail, parsed.hint) == (
        sqlstate,
        message,
        detail,
        hint,
    )


@FUZZ
@given(wire_text, wire_text, values, st.lists(int16s, max_size=4), st.lists(int16s, max_size=4))
def test_bind_round_trip(portal, statement, params, param_formats, result_formats) -> None:
    parsed = parse_frontend(
        *single(build_bind(portal, statement, params, param_formats, result_formats))
    )
    assert parsed == Bind(
        portal, statement, tuple(param_formats), tuple(params), tuple(result_formats)
    )


@FUZZ
@given(wire_text, wire_text, st.lists(uint32s, max_size=6), values, wire_text, wire_text)
def test_misc_round_trips(name, query, oids, row, key, value) -> None:
    assert parse_frontend(*single(build_parse(name, query, oids))) == Parse(
        name, query, tuple(oids)
    )
    assert parse_frontend(*single(build_query(query))) == Query(query)
    assert parse_backend(*single(build_data_row(row))) == DataRow(tuple(row))
    assert parse_backend(*single(build_parameter_status(key, value))) == ParameterStatus(key, value)
    options = [f"_pq_.{name}"]
    assert parse_backend(*single(build_negotiate_protocol_version(2, options))) == (
        NegotiateProtocolVersion(2, tuple(options))
    )


@FUZZ
@given(st.lists(st.binary(max_size=50), max_size=10), st.integers(1, 17))
def test_message_reader_reassembles_any_chunking(bodies: list[bytes], chunk: int) -> None:
    stream = b"".join(frame(b"d", body) for body in bodies)
    reader = MessageReader()
    found = []
    for start in range(0, len(stream), chunk):
        reader.feed(stream[start : start + chunk])
        while (message := reader.next_message()) is not None:
            found.append(message)
    assert found == [(b"d", body) for body in bodies]
    assert reader.pending() == 0
