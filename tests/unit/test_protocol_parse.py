"""Typed parsing of hand-written message bodies, and every malformed body raising ProtocolError."""

from __future__ import annotations

import pytest

from ithaca.protocol import (
    AuthCode,
    BindComplete,
    CloseComplete,
    CommandComplete,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    ErrorResponse,
    FunctionCall,
    NoData,
    NotificationResponse,
    ParameterDescription,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    ProtocolError,
    ReadyForQuery,
    parse_backend,
    parse_frontend,
)
from ithaca.protocol.messages import FunctionCallResponse, ObjectKind, TransactionStatus


def test_backend_typed_values() -> None:
    assert parse_backend(b"Z", b"I") == ReadyForQuery(TransactionStatus.IDLE)
    assert parse_backend(b"Z", b"E").status is TransactionStatus.FAILED
    assert parse_backend(b"1", b"") == ParseComplete()
    assert parse_backend(b"2", b"") == BindComplete()
    assert parse_backend(b"3", b"") == CloseComplete()
    assert parse_backend(b"n", b"") == NoData()
    assert parse_backend(b"s", b"") == PortalSuspended()
    assert parse_backend(b"t", b"\0\x02\0\0\0\x17\0\0\0\x19") == ParameterDescription((23, 25))
    assert parse_backend(b"G", b"\0\0\x01\0\0") == CopyInResponse(0, (0,))
    assert parse_backend(b"H", b"\x01\0\x02\0\x01\0\x01") == CopyOutResponse(1, (1, 1))
    assert parse_backend(b"A", b"\0\0\0\x2achan\0hello\0") == NotificationResponse(
        42, "chan", "hello"
    )
    assert parse_backend(b"V", b"\xff\xff\xff\xff") == FunctionCallResponse(None)
    assert parse_backend(b"D", b"\0\0") == DataRow(())
    auth = parse_backend(b"R", b"\0\0\0\x0aSCRAM-SHA-256\0\0")
    assert auth.code is AuthCode.SASL and auth.mechanisms == ["SCRAM-SHA-256"]


def test_error_response_keeps_unknown_fields_and_is_immutable() -> None:
    err = parse_backend(b"E", b"SERROR\0C42601\0Mboom\0P7\0Zfuture\0\0")
    assert isinstance(err, ErrorResponse)
    assert err.severity == "ERROR" and err.sqlstate == "42601" and err.fields["Z"] == "future"
    with pytest.raises(TypeError):
        err.fields["M"] = "other"  # type: ignore[index]


def test_command_complete_row_count() -> None:
    assert CommandComplete("SELECT 5").row_count == 5
    assert CommandComplete("INSERT 0 3").row_count == 3
    assert CommandComplete("BEGIN").row_count is None


def test_frontend_typed_values() -> None:
    describe = parse_frontend(b"D", b"Sname\0")
    assert describe.kind is ObjectKind.STATEMENT and describe.name == "name"
    call = parse_frontend(b"F", b"\0\0\0\x0a\0\0\0\x01\0\0\0\x01x\0\0")
    assert call == FunctionCall(10, (), (b"x",), 0)
    assert parse_frontend(b"p", b"raw") == PasswordMessage(b"raw")


def test_invalid_utf8_decodes_without_raising() -> None:
    query = parse_frontend(b"Q", b"SELECT '\xff\xfe'\0")
    assert query.sql.startswith("SELECT '")


BAD_BACKEND = [
    (b"?", b""),  # unknown type
    (b"", b""),
    (b"ZZ", b"I"),
    (b"Z", b""),  # truncated
    (b"Z", b"X"),  # invalid status
    (b"Z", b"II"),  # trailing byte
    (b"R", b"\0\0"),
    (b"R", b"\0\0\0\x01"),  # unknown auth code
    (b"R", b"\0\0\0\0x"),  # OK with data
    (b"R", b"\0\0\0\x05abc"),  # short salt
    (b"R", b"\0\0\0\x0aSCRAM\0"),  # unterminated mechanism list
    (b"R", b"\0\0\0\x0a\0"),  # empty mechanism list
    (b"R", b"\0\0\0\x0aA\0\0B\0\0"),  # bytes after the list
    (b"S", b"name\0"),
    (b"S", b"name\0value"),
    (b"S", b"a\0b\0c"),
    (b"K", b"\0\0\0\x01\0\0"),
    (b"E", b"SERROR\0"),  # missing terminator
    (b"E", b"SERROR"),
    (b"E", b"\0x"),
    (b"C", b"SELECT 1"),
    (b"T", b"\0\x01name\0\0\0"),
    (b"D", b"\0\x01\0\0\0\x05ab"),  # value longer than the body
    (b"D", b"\0\x01\xff\xff\xff\xfe"),  # negative length other than -1
    (b"D", b"\0\0x"),
    (b"t", b"\0\x01\0\0"),
    (b"G", b"\0\0\x02\0\0"),
    (b"A", b"\0\0\0\x01chan\0"),
    (b"v", b"\0\0\0\0\xff\xff\xff\xff"),
    (b"v", b"\0\0\0\0\0\0\0\x02a\0"),
    (b"1", b"x"),
    (b"I", b"\0"),
]


@pytest.mark.parametrize("mtype, body", BAD_BACKEND)
def test_malformed_backend_messages_raise_protocol_error(mtype: bytes, body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_backend(mtype, body)
    assert info.value.sqlstate == "08P01"


BAD_FRONTEND = [
    (b"R", b""),  # a backend-only type
    (b"Q", b"SELECT 1"),
    (b"Q", b"SELECT 1\0\0"),
    (b"P", b"s\0SELECT\0"),
    (b"P", b"s\0SELECT\0\0\x01\0\0"),
    (b"B", b"\0s\0\0\0\0\x01\0\0\0\x09ab\0\0"),
    (b"B", b"\0s\0\0\0\0\0"),
    (b"B", b"\0s\0\0\0\0\0\0\0\0"),
    (b"D", b"Xname\0"),
    (b"D", b""),
    (b"C", b"P"),
    (b"E", b"\0\0\0"),
    (b"S", b"\0"),
    (b"X", b"x"),
    (b"f", b"oops"),
    (b"F", b"\0\0\0\x0a\0\0\0\0"),
]


@pytest.mark.parametrize("mtype, body", BAD_FRONTEND)
def test_malformed_frontend_messages_raise_protocol_error(mtype: bytes, body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frontend(mtype, body)
    assert info.value.sqlstate == "08P01"


def test_parsers_accept_bytearray_and_memoryview() -> None:
    assert parse_backend(b"C", bytearray(b"BEGIN\0")) == CommandComplete("BEGIN")
    assert parse_backend(b"C", memoryview(b"BEGIN\0")) == CommandComplete("BEGIN")
