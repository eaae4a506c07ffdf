"""Parsers from (type byte, complete body) to the typed values of messages.py, one per wire letter.
Unknown types, truncated bodies and trailing bytes all raise ProtocolError (SQLSTATE 08P01)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._body import U32, Body
from .errors import ProtocolError
from .messages import (
    AuthCode,
    Authentication,
    BackendKeyData,
    BackendMessage,
    Bind,
    BindComplete,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    FrontendMessage,
    FunctionCall,
    FunctionCallResponse,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ObjectKind,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    Sync,
    Terminate,
    TransactionStatus,
)
from .startup import MAX_CANCEL_KEY, MIN_CANCEL_KEY

# ---------------------------------------------------------------- body parsers


def _empty(cls: type) -> Callable[[Body], object]:
    instance = cls()

    def parse(body: Body) -> object:
        body.finish()
        return instance

    return parse


def _parse_authentication(body: Body) -> Authentication:
    raw_code = body.int32()
    try:
        code = AuthCode(raw_code)
    except ValueError:
        raise ProtocolError(f"unsupported authentication request {raw_code}") from None
    data = body.rest()
    if code == AuthCode.MD5:
        if len(data) != 4:
            raise ProtocolError("AuthenticationMD5Password salt must be 4 bytes")
    elif code == AuthCode.SASL:
        # mechanism\0 ... \0: a list of names closed by an empty one, nothing after it.
        if not data.endswith(b"\0\0") or b"\0\0" in data[:-1] or data.startswith(b"\0"):
            raise ProtocolError("malformed AuthenticationSASL mechanism list")
    elif code not in (AuthCode.GSS_CONTINUE, AuthCode.SASL_CONTINUE, AuthCode.SASL_FINAL) and data:
        raise ProtocolError(f"Authentication request {code.name} has unexpected data")
    return Authentication(code, data)


def _parse_parameter_status(body: Body) -> ParameterStatus:
    name = body.cstring()
    value = body.cstring()
    body.finish()
    return ParameterStatus(name, value)


def _parse_backend_key_data(body: Body) -> BackendKeyData:
    pid = body.uint32()
    key = body.rest()
    if not MIN_CANCEL_KEY <= len(key) <= MAX_CANCEL_KEY:
        raise ProtocolError(f"BackendKeyData has a cancel key of {len(key)} bytes")
    return BackendKeyData(pid, U32.unpack_from(key)[0], key if len(key) > MIN_CANCEL_KEY else b"")


def _parse_ready_for_query(body: Body) -> ReadyForQuery:
    raw = body.rest()
    try:
        return ReadyForQuery(TransactionStatus(raw))
    except ValueError:
        raise ProtocolError(f"ReadyForQuery has invalid transaction status {raw!r}") from None


def _parse_fields(body: Body) -> dict[str, str]:
    fields: dict[str, str] = {}
    while True:
        code = body.byte()
        if code == 0:
            body.finish()
            return fields
        fields[chr(code)] = body.cstring()


def _parse_error(body: Body) -> ErrorResponse:
    return ErrorResponse(_parse_fields(body))


def _parse_notice(body: Body) -> NoticeResponse:
    return NoticeResponse(_parse_fields(body))


def _parse_command_complete(body: Body) -> CommandComplete:
    tag = body.cstring()
    body.finish()
    return CommandComplete(tag)


def _parse_row_description(body: Body) -> RowDescription:
    count = body.uint16()
    fields = []
    for _ in range(count):
        name = body.cstring()
        table_oid, column_number = body.uint32(), body.int16()
        type_oid, type_size, type_modifier = body.uint32(), body.int16(), body.int32()
        fmt = body.int16()
        fields.append(
            FieldDescription(
                name, table_oid, column_number, type_oid, type_size, type_modifier, fmt
            )
        )
    body.finish()
    return RowDescription(tuple(fields))


def _parse_data_row(body: Body) -> DataRow:
    count = body.uint16()
    values = tuple(body.nullable() for _ in range(count))
    body.finish()
    return DataRow(values)


def _parse_parameter_description(body: Body) -> ParameterDescription:
    count = body.uint16()
    oids = tuple(body.uint32() for _ in range(count))
    body.finish()
    return ParameterDescription(oids)


def _copy_response(cls: type) -> Callable[[Body], object]:
    def parse(body: Body) -> object:
        fmt = body.byte()
        formats = body.int16_array()
        body.finish()
        return cls(fmt, formats)

    return parse


def _parse_copy_data(body: Body) -> CopyData:
    return CopyData(body.rest())


def _parse_notification(body: Body) -> NotificationResponse:
    pid = body.uint32()
    channel = body.cstring()
    payload = body.cstring()
    body.finish()
    return NotificationResponse(pid, channel, payload)


def _parse_negotiate(body: Body) -> NegotiateProtocolVersion:
    newest_minor = body.int32()
    count = body.int32()
    if count < 0:
        raise ProtocolError("NegotiateProtocolVersion has a negative option count")
    names = []
    for _ in range(count):  # bounded: each name consumes at least one byte or raises
        names.append(body.cstring())
    body.finish()
    return NegotiateProtocolVersion(newest_minor, tuple(names))


def _parse_function_call_response(body: Body) -> FunctionCallResponse:
    result = body.nullable()
    body.finish()
    return FunctionCallResponse(result)


def _parse_query(body: Body) -> Query:
    sql = body.cstring()
    body.finish()
    return Query(sql)


def _parse_parse(body: Body) -> Parse:
    name = body.cstring()
    query = body.cstring()
    count = body.uint16()
    oids = tuple(body.uint32() for _ in range(count))
    body.finish()
    return Parse(name, query, oids)


def _parse_bind(body: Body) -> Bind:
    portal = body.cstring()
    statement = body.cstring()
    param_formats = body.int16_array()
    params = tuple(body.nullable() for _ in range(body.uint16()))
    result_formats = body.int16_array()
    body.finish()
    return Bind(portal, statement, param_formats, params, result_formats)


def _parse_kind_and_name(body: Body) -> tuple[ObjectKind, str]:
    raw = body.raw(1)
    try:
        kind = ObjectKind(raw)
    except ValueError:
        raise ProtocolError(f"invalid {body.what} kind {raw!r}") from None
    name = body.cstring()
    body.finish()
    return kind, name


def _parse_describe(body: Body) -> Describe:
    return Describe(*_parse_kind_and_name(body))


def _parse_close(body: Body) -> Close:
    return Close(*_parse_kind_and_name(body))


def _parse_execute(body: Body) -> Execute:
    portal = body.cstring()
    max_rows = body.int32()
    body.finish()
    return Execute(portal, max_rows)


def _parse_copy_fail(body: Body) -> CopyFail:
    message = body.cstring()
    body.finish()
    return CopyFail(message)


def _parse_function_call(body: Body) -> FunctionCall:
    oid = body.uint32()
    arg_formats = body.int16_array()
    args = tuple(body.nullable() for _ in range(body.uint16()))
    result_format = body.int16()
    body.finish()
    return FunctionCall(oid, arg_formats, args, result_format)


def _parse_password_message(body: Body) -> PasswordMessage:
    return PasswordMessage(body.rest())


_BACKEND: dict[bytes, tuple[str, Callable[[Body], Any]]] = {
    b"R": ("Authentication", _parse_authentication),
    b"S": ("ParameterStatus", _parse_parameter_status),
    b"K": ("BackendKeyData", _parse_backend_key_data),
    b"Z": ("ReadyForQuery", _parse_ready_for_query),
    b"E": ("ErrorResponse", _parse_error),
    b"N": ("NoticeResponse", _parse_notice),
    b"C": ("CommandComplete", _parse_command_complete),
    b"T": ("RowDescription", _parse_row_description),
    b"D": ("DataRow", _parse_data_row),
    b"I": ("EmptyQueryResponse", _empty(EmptyQueryResponse)),
    b"1": ("ParseComplete", _empty(ParseComplete)),
    b"2": ("BindComplete", _empty(BindComplete)),
    b"3": ("CloseComplete", _empty(CloseComplete)),
    b"n": ("NoData", _empty(NoData)),
    b"s": ("PortalSuspended", _empty(PortalSuspended)),
    b"t": ("ParameterDescription", _parse_parameter_description),
    b"G": ("CopyInResponse", _copy_response(CopyInResponse)),
    b"H": ("CopyOutResponse", _copy_response(CopyOutResponse)),
    b"W": ("CopyBothResponse", _copy_response(CopyBothResponse)),
    b"d": ("CopyData", _parse_copy_data),
    b"c": ("CopyDone", _empty(CopyDone)),
    b"A": ("NotificationResponse", _parse_notification),
    b"v": ("NegotiateProtocolVersion", _parse_negotiate),
    b"V": ("FunctionCallResponse", _parse_function_call_response),
}

_FRONTEND: dict[bytes, tuple[str, Callable[[Body], Any]]] = {
    b"Q": ("Query", _parse_query),
    b"P": ("Parse", _parse_parse),
    b"B": ("Bind", _parse_bind),
    b"D": ("Describe", _parse_describe),
    b"E": ("Execute", _parse_execute),
    b"C": ("Close", _parse_close),
    b"S": ("Sync", _empty(Sync)),
    b"H": ("Flush", _empty(Flush)),
    b"X": ("Terminate", _empty(Terminate)),
    b"d": ("CopyData", _parse_copy_data),
    b"c": ("CopyDone", _empty(CopyDone)),
    b"f": ("CopyFail", _parse_copy_fail),
    b"F": ("FunctionCall", _parse_function_call),
    b"p": ("PasswordMessage", _parse_password_message),
}


def _dispatch(
    table: dict[bytes, tuple[str, Callable[[Body], Any]]], side: str, mtype: bytes, body: bytes
) -> Any:
    entry = table.get(bytes(mtype))
    if entry is None:
        raise ProtocolError(f"unexpected {side} message type {bytes(mtype)!r}")
    name, parse = entry
    return parse(Body(body, name))


def parse_backend(mtype: bytes, body: bytes) -> BackendMessage:
    """Parse a backend (server to client) message body into its typed value."""
    message: BackendMessage = _dispatch(_BACKEND, "backend", mtype, body)
    return message


def parse_frontend(mtype: bytes, body: bytes) -> FrontendMessage:
    """Parse a frontend (client to server) message body into its typed value.

    'p' depends on the authentication exchange, so it comes back as a raw PasswordMessage;
    decode it with parse_password, parse_sasl_initial_response or parse_sasl_response.
    """
    message: FrontendMessage = _dispatch(_FRONTEND, "frontend", mtype, body)
    return message


def parse_password(body: bytes) -> str:
    """The password (cleartext or 'md5…' hash) of a 'p' PasswordMessage body."""
    reader = Body(body, "PasswordMessage")
    password = reader.cstring()
    reader.finish()
    return password


def parse_sasl_initial_response(body: bytes) -> tuple[str, bytes | None]:
    """(mechanism, initial client data or None) of a 'p' SASLInitialResponse body."""
    reader = Body(body, "SASLInitialResponse")
    mechanism = reader.cstring()
    data = reader.nullable()
    reader.finish()
    return mechanism, data


def parse_sasl_response(body: bytes) -> bytes:
    """The client data of a 'p' SASLResponse body (the whole body)."""
    return bytes(body)
