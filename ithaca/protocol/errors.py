"""Errors of the wire codec: a peer that breaks the protocol raises ProtocolError, which carries the
SQLSTATE and the FATAL ErrorResponse to send back. Misusing a builder (our bug) raises ValueError."""

from __future__ import annotations

from .sqlstate import SqlState


class ProtocolError(Exception):
    """The peer sent bytes that violate the PostgreSQL frontend/backend protocol."""

    def __init__(self, message: str, sqlstate: str = SqlState.PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, sqlstate={str(self.sqlstate)!r})"

    def to_error_response(self) -> bytes:
        """The FATAL ErrorResponse message reporting this error to the peer."""
        # Imported here: build.py depends on messages.py, which depends on this module.
        from .build import build_error

        return build_error(self.sqlstate, self.message, severity="FATAL")
