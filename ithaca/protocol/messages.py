"""Typed, immutable PostgreSQL protocol messages (both directions) and the wire enums they use.
Values are made by parse.py from complete bodies and turned into bytes by build.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum

from ._body import U32, frozen_mapping


class AuthCode(IntEnum):
    """Subtype of an 'R' Authentication message."""

    OK = 0
    KERBEROS_V5 = 2
    CLEARTEXT = 3
    MD5 = 5
    SCM_CREDENTIAL = 6
    GSS = 7
    GSS_CONTINUE = 8
    SSPI = 9
    SASL = 10
    SASL_CONTINUE = 11
    SASL_FINAL = 12


class TransactionStatus(bytes, Enum):
    """Status byte of 'Z' ReadyForQuery; members compare equal to b'I', b'T', b'E'."""

    IDLE = b"I"
    IN_TRANSACTION = b"T"
    FAILED = b"E"


class ObjectKind(bytes, Enum):
    """What 'D' Describe and 'C' Close refer to; members compare equal to b'S' and b'P'."""

    STATEMENT = b"S"
    PORTAL = b"P"


class ErrorField(StrEnum):
    """Field codes of 'E' ErrorResponse and 'N' NoticeResponse."""

    SEVERITY = "S"
    SEVERITY_NONLOCALIZED = "V"
    SQLSTATE = "C"
    MESSAGE = "M"
    DETAIL = "D"
    HINT = "H"
    POSITION = "P"
    INTERNAL_POSITION = "p"
    INTERNAL_QUERY = "q"
    WHERE = "W"
    SCHEMA_NAME = "s"
    TABLE_NAME = "t"
    COLUMN_NAME = "c"
    DATA_TYPE_NAME = "d"
    CONSTRAINT_NAME = "n"
    FILE = "F"
    LINE = "L"
    ROUTINE = "R"


# ---------------------------------------------------------------- backend messages


@dataclass(frozen=True, slots=True)
class Authentication:  # 'R'
    code: int
    data: bytes = b""

    @property
    def salt(self) -> bytes:
        """The 4-byte salt of an MD5 request."""
        return self.data if self.code == AuthCode.MD5 else b""

    @property
    def mechanisms(self) -> list[str]:
        """The SASL mechanisms offered by a SASL request, in server preference order."""
        if self.code != AuthCode.SASL:
            return []
        return [m.decode("utf-8", "surrogateescape") for m in self.data.split(b"\0") if m]


@dataclass(frozen=True, slots=True)
class ParameterStatus:  # 'S'
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class BackendKeyData:  # 'K'
    pid: int
    secret: int  # unsigned; the first 4 key bytes
    secret_bytes: bytes = b""  # the whole key when longer than 4 bytes (protocol 3.2)

    @property
    def key(self) -> bytes:
        return self.secret_bytes or U32.pack(self.secret)


@dataclass(frozen=True, slots=True)
class ReadyForQuery:  # 'Z'
    status: bytes  # a TransactionStatus when parsed


class _NoticeFields:
    """Accessors shared by 'E' ErrorResponse and 'N' NoticeResponse."""

    __slots__ = ()
    fields: Mapping[str, str]

    @property
    def severity(self) -> str:
        # 'V' is never localized (9.6+); 'S' may be translated.
        return self.fields.get("V") or self.fields.get("S", "")

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def detail(self) -> str | None:
        return self.fields.get("D")

    @property
    def hint(self) -> str | None:
        return self.fields.get("H")


@dataclass(frozen=True, slots=True)
class ErrorResponse(_NoticeFields):  # 'E'
    fields: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", frozen_mapping(self.fields))


@dataclass(frozen=True, slots=True)
class NoticeResponse(_NoticeFields):  # 'N'
    fields: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", frozen_mapping(self.fields))


@dataclass(frozen=True, slots=True)
class CommandComplete:  # 'C'
    tag: str

    @property
    def row_count(self) -> int | None:
        """The trailing row count of tags like 'SELECT 5' or 'INSERT 0 3', if any."""
        last = self.tag.rpartition(" ")[2]
        return int(last) if last.isascii() and last.isdigit() and " " in self.tag else None


@dataclass(frozen=True, slots=True)
class FieldDescription:
    name: str
    table_oid: int = 0
    column_number: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


@dataclass(frozen=True, slots=True)
class RowDescription:  # 'T'
    fields: tuple[FieldDescription, ...]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]


@dataclass(frozen=True, slots=True)
class DataRow:  # 'D'
    values: tuple[bytes | None, ...]


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse:  # 'I'
    pass


@dataclass(frozen=True, slots=True)
class ParseComplete:  # '1'
    pass


@dataclass(frozen=True, slots=True)
class BindComplete:  # '2'
    pass


@dataclass(frozen=True, slots=True)
class CloseComplete:  # '3'
    pass


@dataclass(frozen=True, slots=True)
class NoData:  # 'n'
    pass


@dataclass(frozen=True, slots=True)
class PortalSuspended:  # 's'
    pass


@dataclass(frozen=True, slots=True)
class ParameterDescription:  # 't'
    type_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyInResponse:  # 'G'
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyOutResponse:  # 'H'
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyBothResponse:  # 'W'
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyData:  # 'd' (both directions)
    data: bytes


@dataclass(frozen=True, slots=True)
class CopyDone:  # 'c' (both directions)
    pass


@dataclass(frozen=True, slots=True)
class NotificationResponse:  # 'A'
    pid: int
    channel: str
    payload: str


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:  # 'v'
    newest_minor: int
    unrecognized: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:  # 'V'
    result: bytes | None


# ---------------------------------------------------------------- frontend messages


@dataclass(frozen=True, slots=True)
class Query:  # 'Q'
    sql: str


@dataclass(frozen=True, slots=True)
class Parse:  # 'P'
    name: str
    query: str
    param_oids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Bind:  # 'B'
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Describe:  # 'D'
    kind: bytes  # an ObjectKind when parsed
    name: str


@dataclass(frozen=True, slots=True)
class Execute:  # 'E'
    portal: str = ""
    max_rows: int = 0


@dataclass(frozen=True, slots=True)
class Close:  # 'C'
    kind: bytes  # an ObjectKind when parsed
    name: str


@dataclass(frozen=True, slots=True)
class Sync:  # 'S'
    pass


@dataclass(frozen=True, slots=True)
class Flush:  # 'H'
    pass


@dataclass(frozen=True, slots=True)
class Terminate:  # 'X'
    pass


@dataclass(frozen=True, slots=True)
class CopyFail:  # 'f'
    message: str


@dataclass(frozen=True, slots=True)
class FunctionCall:  # 'F'
    function_oid: int
    arg_formats: tuple[int, ...]
    args: tuple[bytes | None, ...]
    result_format: int


@dataclass(frozen=True, slots=True)
class PasswordMessage:  # 'p' -- password, SASL or GSS data; read with parse_password & co.
    data: bytes


BackendMessage = (
    Authentication
    | ParameterStatus
    | BackendKeyData
    | ReadyForQuery
    | ErrorResponse
    | NoticeResponse
    | CommandComplete
    | RowDescription
    | DataRow
    | EmptyQueryResponse
    | ParseComplete
    | BindComplete
    | CloseComplete
    | NoData
    | PortalSuspended
    | ParameterDescription
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | CopyData
    | CopyDone
    | NotificationResponse
    | NegotiateProtocolVersion
    | FunctionCallResponse
)

FrontendMessage = (
    Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | Terminate
    | CopyData
    | CopyDone
    | CopyFail
    | FunctionCall
    | PasswordMessage
)
