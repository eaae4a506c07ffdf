"""Builders against hand-written wire bytes, then parsed back to the values they encode."""

from __future__ import annotations

import hashlib

import pytest

from ithaca.protocol import (
    AuthCode,
    Authentication,
    BackendKeyData,
    Bind,
    Close,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyFail,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    Flush,
    MessageReader,
    NegotiateProtocolVersion,
    NoticeResponse,
    ParameterStatus,
    Parse,
    ProtocolError,
    Query,
    ReadyForQuery,
    SqlState,
    Sync,
    Terminate,
    build_auth_cleartext,
    build_auth_md5,
    build_auth_ok,
    build_auth_sasl,
    build_auth_sasl_continue,
    build_auth_sasl_final,
    build_backend_key_data,
    build_bind,
    build_cancel_request,
    build_close,
    build_command_complete,
    build_copy_data,
    build_copy_done,
    build_copy_fail,
    build_data_row,
    build_describe,
    build_empty_query_response,
    build_error,
    build_execute,
    build_flush,
    build_negotiate_protocol_version,
    build_notice,
    build_parameter_status,
    build_parse,
    build_password,
    build_query,
    build_ready_for_query,
    build_row_description,
    build_sasl_initial_response,
    build_sasl_response,
    build_ssl_request,
    build_startup,
    build_sync,
    build_terminate,
    md5_password_hash,
    md5_password_secret,
    parse_backend,
    parse_frontend,
    parse_password,
    parse_sasl_initial_response,
    parse_sasl_response,
)
from ithaca.protocol.md5 import is_md5_secret, md5_hash_from_secret

EXPECTED = [
    (build_auth_ok(), b"R\0\0\0\x08\0\0\0\0"),
    (build_auth_cleartext(), b"R\0\0\0\x08\0\0\0\x03"),
    (build_auth_md5(b"abcd"), b"R\0\0\0\x0c\0\0\0\x05abcd"),
    (build_auth_sasl(["SCRAM-SHA-256"]), b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0"),
    (build_auth_sasl_continue(b"r=abc"), b"R\0\0\0\x0d\0\0\0\x0br=abc"),
    (build_auth_sasl_final(b"v=x"), b"R\0\0\0\x0b\0\0\0\x0cv=x"),
    (build_parameter_status("client_encoding", "UTF8"), b"S\0\0\0\x19client_encoding\0UTF8\0"),
    (build_backend_key_data(1234, 5678), b"K\0\0\0\x0c\0\0\x04\xd2\0\0\x16\x2e"),
    (build_ready_for_query(b"I"), b"Z\0\0\0\x05I"),
    (build_ready_for_query(b"T"), b"Z\0\0\0\x05T"),
    (build_ready_for_query(b"E"), b"Z\0\0\0\x05E"),
    (build_query("SELECT 1"), b"Q\0\0\0\x0dSELECT 1\0"),
    (build_parse("s1", "SELECT $1", [23]), b"P\0\0\0\x17s1\0SELECT $1\0\0\x01\0\0\0\x17"),
    (
        build_bind("", "s1", [b"42", None], [0], [1]),
        b"B\0\0\0\x1c\0s1\0\0\x01\0\0\0\x02\0\0\0\x0242\xff\xff\xff\xff\0\x01\0\x01",
    ),
    (build_bind("", ""), b"B\0\0\0\x0c\0\0\0\0\0\0\0\0"),
    (build_describe(b"S", "s1"), b"D\0\0\0\x08Ss1\0"),
    (build_describe("P", ""), b"D\0\0\0\x06P\0"),
    (build_execute(), b"E\0\0\0\x09\0\0\0\0\0"),
    (build_execute("p", 10), b"E\0\0\0\x0ap\0\0\0\0\x0a"),
    (build_close(b"P", ""), b"C\0\0\0\x06P\0"),
    (build_sync(), b"S\0\0\0\x04"),
    (build_flush(), b"H\0\0\0\x04"),
    (build_terminate(), b"X\0\0\0\x04"),
    (build_password("secret"), b"p\0\0\0\x0bsecret\0"),
    (
        build_sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=x"),
        b"p\0\0\0\x1fSCRAM-SHA-256\0\0\0\0\x09n,,n=,r=x",
    ),
    (build_sasl_initial_response("X", None), b"p\0\0\0\x0aX\0\xff\xff\xff\xff"),
    (build_sasl_response(b"c=biws"), b"p\0\0\0\x0ac=biws"),
    (
        build_startup({"user": "bob", "database": "db"}),
        b"\0\0\0\x1e\0\x03\0\0user\0bob\0database\0db\0\0",
    ),
    (build_startup({"user": "a"}, minor=2), b"\0\0\0\x10\0\x03\0\x02user\0a\0\0"),
    (build_cancel_request(1234, 5678), b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\x04\xd2\0\0\x16\x2e"),
    (build_ssl_request(), b"\0\0\0\x08\x04\xd2\x16\x2f"),
    (build_copy_data(b"abc"), b"d\0\0\0\x07abc"),
    (build_copy_done(), b"c\0\0\0\x04"),
    (build_copy_fail("oops"), b"f\0\0\0\x09oops\0"),
    (
        build_row_description(["name"]),
        b"T\0\0\0\x1d\0\x01name\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
    ),
    (
        build_row_description([("n", 20)]),
        b"T\0\0\0\x1a\0\x01n\0\0\0\0\0\0\0\0\0\0\x14\0\x08\xff\xff\xff\xff\0\0",
    ),
    (
        build_data_row([b"1", "ab", None]),
        b"D\0\0\0\x15\0\x03\0\0\0\x011\0\0\0\x02ab\xff\xff\xff\xff",
    ),
    (build_command_complete("SELECT 1"), b"C\0\0\0\x0dSELECT 1\0"),
    (build_empty_query_response(), b"I\0\0\0\x04"),
    (
        build_negotiate_protocol_version(0, ["_pq_.x"]),
        b"v\0\0\0\x13\0\0\0\0\0\0\0\x01_pq_.x\0",
    ),
    (
        build_error("08P01", "bad", severity="FATAL"),
        b"E\0\0\0\x1fSFATAL\0VFATAL\0C08P01\0Mbad\0\0",
    ),
    (build_notice("01000", "hi"), b"N\0\0\0\x20SNOTICE\0VNOTICE\0C01000\0Mhi\0\0"),
    (
        build_error(SqlState.INVALID_PASSWORD, "no", detail="d", hint="h"),
        b"E\0\0\0\x24SERROR\0VERROR\0C28P01\0Mno\0Dd\0Hh\0\0",
    ),
]


@pytest.mark.parametrize("built, expected", EXPECTED, ids=[repr(e[:1]) for _, e in EXPECTED])
def test_builder_bytes(built: bytes, expected: bytes) -> None:
    assert built == expected


def _frame(message: bytes) -> tuple[bytes, bytes]:
    reader = MessageReader()
    reader.feed(message)
    frame = reader.next_message()
    assert frame is not None and reader.pending() == 0
    return frame


def backend(message: bytes) -> object:
    return parse_backend(*_frame(message))


def frontend(message: bytes) -> object:
    return parse_frontend(*_frame(message))


def test_backend_round_trips() -> None:
    assert backend(build_auth_ok()) == Authentication(AuthCode.OK)
    assert backend(build_auth_cleartext()) == Authentication(AuthCode.CLEARTEXT)
    md5 = backend(build_auth_md5(b"\x01\x02\x03\x04"))
    assert (
        md5 == Authentication(AuthCode.MD5, b"\x01\x02\x03\x04") and md5.salt == b"\x01\x02\x03\x04"
    )
    sasl = backend(build_auth_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
    assert sasl.mechanisms == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    assert backend(build_auth_sasl_continue(b"r=1")) == Authentication(
        AuthCode.SASL_CONTINUE, b"r=1"
    )
    assert backend(build_auth_sasl_final(b"v=2")) == Authentication(AuthCode.SASL_FINAL, b"v=2")
    assert backend(build_parameter_status("a", "b")) == ParameterStatus("a", "b")
    assert backend(build_backend_key_data(7, 0xFFFFFFFF)) == BackendKeyData(7, 0xFFFFFFFF)
    long_key = bytes(range(32))
    key_data = backend(build_backend_key_data(7, long_key))
    assert key_data.secret_bytes == long_key and key_data.key == long_key
    assert key_data.secret == 0x00010203
    rfq = backend(build_ready_for_query(b"T"))
    assert rfq == ReadyForQuery(b"T") and rfq.status == b"T"
    assert backend(build_command_complete("INSERT 0 3")) == CommandComplete("INSERT 0 3")
    assert backend(build_data_row([b"x", None, ""])) == DataRow((b"x", None, b""))
    assert backend(build_empty_query_response()) == EmptyQueryResponse()
    assert backend(build_copy_data(b"\0\1")) == CopyData(b"\0\1")
    assert backend(build_copy_done()) == CopyDone()
    assert backend(build_negotiate_protocol_version(2, ["_pq_.a", "_pq_.b"])) == (
        NegotiateProtocolVersion(2, ("_pq_.a", "_pq_.b"))
    )
    rows = backend(build_row_description(["a", ("b", 23)]))
    assert rows.names == ["a", "b"]
    assert [(f.type_oid, f.type_size) for f in rows.fields] == [(25, -1), (23, 4)]


def test_error_and_notice_round_trip() -> None:
    err = backend(build_error("57P01", "bye", severity="FATAL", detail="why", hint="retry"))
    assert isinstance(err, ErrorResponse)
    assert (err.severity, err.sqlstate, err.message, err.detail, err.hint) == (
        "FATAL",
        "57P01",
        "bye",
        "why",
        "retry",
    )
    assert err.fields["S"] == "FATAL" and err.fields["V"] == "FATAL"
    notice = backend(build_notice("01000", "careful"))
    assert isinstance(notice, NoticeResponse)
    assert (notice.severity, notice.message, notice.detail, notice.hint) == (
        "NOTICE",
        "careful",
        None,
        None,
    )


def test_frontend_round_trips() -> None:
    assert frontend(build_query("SELECT 'é'")) == Query("SELECT 'é'")
    assert frontend(build_parse("s", "SELECT $1, $2", [23, 0xFFFFFFFF])) == Parse(
        "s", "SELECT $1, $2", (23, 0xFFFFFFFF)
    )
    assert frontend(build_bind("p", "s", [b"1", None, "é"], [1], [0, 1])) == Bind(
        "p", "s", (1,), (b"1", None, "é".encode()), (0, 1)
    )
    assert frontend(build_describe(b"P", "p")) == Describe(b"P", "p")
    assert frontend(build_execute("p", 5)) == Execute("p", 5)
    assert frontend(build_close(b"S", "s")) == Close(b"S", "s")
    assert frontend(build_sync()) == Sync()
    assert frontend(build_flush()) == Flush()
    assert frontend(build_terminate()) == Terminate()
    assert frontend(build_copy_data(b"row\n")) == CopyData(b"row\n")
    assert frontend(build_copy_done()) == CopyDone()
    assert frontend(build_copy_fail("nope")) == CopyFail("nope")


def test_password_messages_round_trip() -> None:
    assert parse_password(_frame(build_password("pässword"))[1]) == "pässword"
    mtype, body = _frame(build_sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"))
    assert mtype == b"p"
    assert parse_sasl_initial_response(body) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert parse_sasl_initial_response(_frame(build_sasl_initial_response("X", None))[1]) == (
        "X",
        None,
    )
    assert parse_sasl_response(_frame(build_sasl_response(b"c=biws,r=1"))[1]) == b"c=biws,r=1"


@pytest.mark.parametrize(
    "body",
    [b"", b"secret", b"secret\0extra", b"a\0\0"],
)
def test_parse_password_rejects_bad_layout(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_password(body)
    assert info.value.sqlstate == "08P01"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"SCRAM",
        b"SCRAM\0",
        b"SCRAM\0\0\0\0\x05abc",
        b"SCRAM\0\0\0\0\x01ab",
        b"S\0\xff\xff\xff\xfe",
    ],
)
def test_parse_sasl_initial_response_rejects_bad_layout(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_sasl_initial_response(body)


@pytest.mark.parametrize(
    "call",
    [
        lambda: build_query("a\0b"),
        lambda: build_auth_md5(b"abc"),
        lambda: build_auth_sasl([]),
        lambda: build_auth_sasl([""]),
        lambda: build_ready_for_query(b"X"),
        lambda: build_describe(b"X", "n"),
        lambda: build_close("Q", "n"),
        lambda: build_startup({"": "x"}),
        lambda: build_startup({"user": "x"}, minor=70000),
        lambda: build_backend_key_data(1, b"abc"),
        lambda: build_cancel_request(1 << 32, 1),
        lambda: build_data_row([None] * 70000),
    ],
)
def test_builders_reject_invalid_arguments(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_protocol_error_carries_its_reply() -> None:
    err = ProtocolError("bad startup packet")
    assert err.message == "bad startup packet" and err.sqlstate == SqlState.PROTOCOL_VIOLATION
    assert str(err) == "bad startup packet"
    reply = backend(err.to_error_response())
    assert (reply.severity, reply.sqlstate, reply.message) == (
        "FATAL",
        "08P01",
        "bad startup packet",
    )
    custom = ProtocolError("too many", SqlState.TOO_MANY_CONNECTIONS)
    assert backend(custom.to_error_response()).sqlstate == "53300"
    assert "53300" in repr(custom)


def test_sqlstate_values() -> None:
    assert SqlState.PROTOCOL_VIOLATION == "08P01"
    assert SqlState.INVALID_PASSWORD == "28P01"
    assert SqlState.IDLE_IN_TRANSACTION_SESSION_TIMEOUT == "25P03"
    assert f"{SqlState.QUERY_CANCELED}" == "57014"


def test_md5_password_hash() -> None:
    inner = hashlib.md5(b"secretalice").hexdigest()
    expected = "md5" + hashlib.md5(inner.encode() + b"salt").hexdigest()
    assert md5_password_secret("alice", "secret") == "md5" + inner
    assert md5_password_hash("alice", "secret", b"salt") == expected
    assert md5_hash_from_secret("md5" + inner, b"salt") == expected
    assert is_md5_secret("md5" + inner) and not is_md5_secret("secret")
    with pytest.raises(ValueError):
        md5_password_hash("alice", "secret", b"abc")
