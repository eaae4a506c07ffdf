"""Builders returning whole wire messages as bytes, for both directions of the protocol.
Invalid arguments (NUL inside a string, out-of-range numbers) are our bug and raise ValueError."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

from .messages import AuthCode, ObjectKind, TransactionStatus
from .startup import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_CANCEL_KEY,
    MIN_CANCEL_KEY,
    PROTOCOL_MAJOR,
    SSL_REQUEST_CODE,
)

_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")

# Fixed sizes of the built-in types build_row_description knows; everything else is varlena (-1).
_TYPE_SIZES = {16: 1, 18: 1, 20: 8, 21: 2, 23: 4, 26: 4, 700: 4, 701: 8, 1082: 4, 1114: 8, 1184: 8}
TEXT_OID = 25


def _message(mtype: bytes, body: bytes = b"") -> bytes:
    return mtype + _I32.pack(len(body) + 4) + body


def _cstring(text: str) -> bytes:
    encoded = text.encode("utf-8", "surrogateescape")
    if b"\0" in encoded:
        raise ValueError(f"protocol strings cannot contain NUL: {text!r}")
    return encoded + b"\0"


def _uint32(value: int) -> bytes:
    """Pack a pid or key that may be given signed or unsigned."""
    if not -(1 << 31) <= value < (1 << 32):
        raise ValueError(f"{value} does not fit in 32 bits")
    return _U32.pack(value & 0xFFFFFFFF)


def _count(items: Sequence[object]) -> bytes:
    if len(items) > 0xFFFF:
        raise ValueError(f"too many items for an Int16 count: {len(items)}")
    return _U16.pack(len(items))


def _int16_array(values: Sequence[int]) -> bytes:
    return _count(values) + b"".join(_I16.pack(v) for v in values)


def _value(value: bytes | str | None) -> bytes:
    """A nullable value: Int32 length (-1 for NULL) then the bytes."""
    if value is None:
        return b"\xff\xff\xff\xff"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    return _I32.pack(len(value)) + value


def _values(values: Sequence[bytes | str | None]) -> bytes:
    return _count(values) + b"".join(_value(v) for v in values)


def _cancel_key(secret: int | bytes) -> bytes:
    if isinstance(secret, int):
        return _uint32(secret)
    if not MIN_CANCEL_KEY <= len(secret) <= MAX_CANCEL_KEY:
        raise ValueError(f"cancel key must be 4 to 256 bytes, got {len(secret)}")
    return bytes(secret)


def _kind(kind: bytes | str) -> bytes:
    raw = kind.encode("ascii") if isinstance(kind, str) else bytes(kind)
    return ObjectKind(raw).value


# ---------------------------------------------------------------- backend messages


def _notice_fields(
    sqlstate: str, message: str, severity: str, detail: str | None, hint: str | None
) -> bytes:
    parts = [b"S", _cstring(severity), b"V", _cstring(severity), b"C", _cstring(str(sqlstate))]
    parts += [b"M", _cstring(message)]
    if detail is not None:
        parts += [b"D", _cstring(detail)]
    if hint is not None:
        parts += [b"H", _cstring(hint)]
    parts.append(b"\0")
    return b"".join(parts)


def build_error(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """'E' ErrorResponse with S, V, C, M and optional D, H fields."""
    return _message(b"E", _notice_fields(sqlstate, message, severity, detail, hint))


def build_notice(
    sqlstate: str,
    message: str,
    *,
    severity: str = "NOTICE",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """'N' NoticeResponse with S, V, C, M and optional D, H fields."""
    return _message(b"N", _notice_fields(sqlstate, message, severity, detail, hint))


_AUTH_OK = _message(b"R", _I32.pack(AuthCode.OK))
_AUTH_CLEARTEXT = _message(b"R", _I32.pack(AuthCode.CLEARTEXT))


def build_auth_ok() -> bytes:
    return _AUTH_OK


def build_auth_cleartext() -> bytes:
    return _AUTH_CLEARTEXT


def build_auth_md5(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise ValueError(f"MD5 salt must be 4 bytes, got {len(salt)}")
    return _message(b"R", _I32.pack(AuthCode.MD5) + bytes(salt))


def build_auth_sasl(mechanisms: Iterable[str]) -> bytes:
    names = [_cstring(m) for m in mechanisms]
    if not names or b"\0" in names:
        raise ValueError("AuthenticationSASL needs at least one non-empty mechanism name")
    return _message(b"R", _I32.pack(AuthCode.SASL) + b"".join(names) + b"\0")


def build_auth_sasl_continue(data: bytes) -> bytes:
    return _message(b"R", _I32.pack(AuthCode.SASL_CONTINUE) + bytes(data))


def build_auth_sasl_final(data: bytes) -> bytes:
    return _message(b"R", _I32.pack(AuthCode.SASL_FINAL) + bytes(data))


def build_parameter_status(name: str, value: str) -> bytes:
    return _message(b"S", _cstring(name) + _cstring(value))


def build_backend_key_data(pid: int, secret: int | bytes) -> bytes:
    """'K' BackendKeyData; ``secret`` is a 32-bit int or a 4..256-byte key (protocol 3.2)."""
    return _message(b"K", _uint32(pid) + _cancel_key(secret))


_READY = {status.value: _message(b"Z", status.value) for status in TransactionStatus}


def build_ready_for_query(status: bytes) -> bytes:
    try:
        return _READY[bytes(status)]
    except KeyError:
        raise ValueError(f"invalid transaction status {status!r}") from None


def build_row_description(columns: Iterable[str | tuple[str, int]]) -> bytes:
    """'T' RowDescription of text-format columns; a column is a name (type text) or (name, oid)."""
    parts = []
    for column in columns:
        name, oid = (column, TEXT_OID) if isinstance(column, str) else column
        size = _TYPE_SIZES.get(oid, -1)
        parts.append(_cstring(name) + struct.pack("!IhIhih", 0, 0, oid, size, -1, 0))
    return _message(b"T", _count(parts) + b"".join(parts))


def build_data_row(values: Sequence[bytes | str | None]) -> bytes:
    return _message(b"D", _values(values))


def build_command_complete(tag: str) -> bytes:
    return _message(b"C", _cstring(tag))


_EMPTY_QUERY = _message(b"I")
_PARSE_COMPLETE = _message(b"1")
_BIND_COMPLETE = _message(b"2")
_CLOSE_COMPLETE = _message(b"3")
_NO_DATA = _message(b"n")


def build_empty_query_response() -> bytes:
    return _EMPTY_QUERY


def build_parse_complete() -> bytes:
    return _PARSE_COMPLETE


def build_bind_complete() -> bytes:
    return _BIND_COMPLETE


def build_close_complete() -> bytes:
    return _CLOSE_COMPLETE


def build_no_data() -> bytes:
    return _NO_DATA


def build_parameter_description(type_oids: Sequence[int]) -> bytes:
    return _message(b"t", _count(type_oids) + b"".join(_U32.pack(oid) for oid in type_oids))


def build_negotiate_protocol_version(newest_minor: int, unrecognized: Sequence[str]) -> bytes:
    body = _I32.pack(newest_minor) + _I32.pack(len(unrecognized))
    return _message(b"v", body + b"".join(_cstring(name) for name in unrecognized))


# ---------------------------------------------------------------- frontend messages


def build_query(sql: str) -> bytes:
    return _message(b"Q", _cstring(sql))


def build_parse(name: str, query: str, param_oids: Sequence[int] = ()) -> bytes:
    oids = b"".join(_U32.pack(oid) for oid in param_oids)
    return _message(b"P", _cstring(name) + _cstring(query) + _count(param_oids) + oids)


def build_bind(
    portal: str,
    statement: str,
    params: Sequence[bytes | str | None] = (),
    param_formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    body = (
        _cstring(portal)
        + _cstring(statement)
        + _int16_array(param_formats)
        + _values(params)
        + _int16_array(result_formats)
    )
    return _message(b"B", body)


def build_describe(kind: bytes | str, name: str) -> bytes:
    return _message(b"D", _kind(kind) + _cstring(name))


def build_execute(portal: str = "", max_rows: int = 0) -> bytes:
    return _message(b"E", _cstring(portal) + _I32.pack(max_rows))


def build_close(kind: bytes | str, name: str) -> bytes:
    return _message(b"C", _kind(kind) + _cstring(name))


_SYNC = _message(b"S")
_FLUSH = _message(b"H")
_TERMINATE = _message(b"X")
_COPY_DONE = _message(b"c")


def build_sync() -> bytes:
    return _SYNC


def build_flush() -> bytes:
    return _FLUSH


def build_terminate() -> bytes:
    return _TERMINATE


def build_password(password: str) -> bytes:
    """'p' PasswordMessage carrying a cleartext password or an 'md5…' hash."""
    return _message(b"p", _cstring(password))


def build_sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    """'p' SASLInitialResponse; ``data`` None sends length -1 (no initial response)."""
    return _message(b"p", _cstring(mechanism) + _value(data))


def build_sasl_response(data: bytes) -> bytes:
    return _message(b"p", bytes(data))


def build_copy_data(data: bytes) -> bytes:
    return _message(b"d", bytes(data))


def build_copy_done() -> bytes:
    return _COPY_DONE


def build_copy_fail(msg: str) -> bytes:
    return _message(b"f", _cstring(msg))


# ---------------------------------------------------------------- startup-phase packets


def _packet(body: bytes) -> bytes:
    return _I32.pack(len(body) + 4) + body


_SSL_REQUEST = _packet(_I32.pack(SSL_REQUEST_CODE))
_GSSENC_REQUEST = _packet(_I32.pack(GSSENC_REQUEST_CODE))


def build_startup(params: Mapping[str, str], minor: int = 0) -> bytes:
    """StartupMessage for protocol 3.``minor`` with the given parameters (user, database, ...)."""
    if not 0 <= minor <= 0xFFFF:
        raise ValueError(f"invalid protocol minor version {minor}")
    parts = [_I32.pack(PROTOCOL_MAJOR << 16 | minor)]
    for name, value in params.items():
        if not name:
            raise ValueError("startup parameter names cannot be empty")
        parts += [_cstring(name), _cstring(value)]
    parts.append(b"\0")
    return _packet(b"".join(parts))


def build_cancel_request(pid: int, secret: int | bytes) -> bytes:
    return _packet(_I32.pack(CANCEL_REQUEST_CODE) + _uint32(pid) + _cancel_key(secret))


def build_ssl_request() -> bytes:
    return _SSL_REQUEST


def build_gssenc_request() -> bytes:
    return _GSSENC_REQUEST
