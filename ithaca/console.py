"""Admin console: the pseudo-database served by a route whose storage has type "local".
Answers simple queries itself (SHOW VERSION for now); the console issue adds the other views."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import __version__
from .protocol import (
    MessageReader,
    ProtocolError,
    Query,
    SqlState,
    build_backend_key_data,
    build_command_complete,
    build_data_row,
    build_empty_query_response,
    build_error,
    build_parameter_status,
    build_ready_for_query,
    build_row_description,
    parse_frontend,
)

if TYPE_CHECKING:
    from .frontend import Client

log = logging.getLogger("ithaca.console")

CONSOLE_PARAMS = {
    "server_version": f"ithaca {__version__}",
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "DateStyle": "ISO",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
}


class Console:
    def __init__(self) -> None:
        self.commands = {"show version": self._show_version}

    async def serve(self, client: Client, reader: MessageReader) -> None:
        link = client.link
        rule = client.route.rule if client.route is not None else None
        if rule is not None and rule.role == "notallow":
            raise ProtocolError(f'user "{client.user}" may not use the admin console',
                                SqlState.INSUFFICIENT_PRIVILEGE)
        out = [build_parameter_status(k, v) for k, v in CONSOLE_PARAMS.items()]
        out.append(build_backend_key_data(0, 0))
        out.append(build_ready_for_query(b"I"))
        link.write(b"".join(out))
        while True:
            mtype, body = await link.read_message(reader)
            if mtype == b"X":
                link.close()
                return
            if mtype != b"Q":
                raise ProtocolError("the admin console supports only the simple query protocol",
                                    SqlState.FEATURE_NOT_SUPPORTED)
            query = parse_frontend(mtype, body)
            assert isinstance(query, Query)
            link.write(self.execute(query.sql) + build_ready_for_query(b"I"))

    def execute(self, sql: str) -> bytes:
        text = " ".join(sql.strip().rstrip(";").split()).lower()
        if not text:
            return build_empty_query_response()
        handler = self.commands.get(text)
        if handler is None:
            return build_error(SqlState.FEATURE_NOT_SUPPORTED,
                               f"unsupported console command: {sql.strip()[:200]}")
        return handler()

    def _show_version(self) -> bytes:
        return (build_row_description(["version"]) + build_data_row([f"ithaca {__version__}"])
                + build_command_complete("SHOW"))
