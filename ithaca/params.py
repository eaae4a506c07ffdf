"""Client parameters (maintain_params): the settings a client asked for at startup (including
`options` -c key=value) or later SET and saw reported, deployed with SET on whatever server it
gets next when that server's values differ, so clients sharing servers each see their own."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .server import ServerConn

# Settings PostgreSQL reports with ParameterStatus that a client may change.
REPORTED_SETTABLE = frozenset({
    "application_name", "client_encoding", "DateStyle", "IntervalStyle", "TimeZone",
    "standard_conforming_strings", "search_path", "default_transaction_read_only",
})
_REPORTED_LOWER = {name.lower(): name for name in REPORTED_SETTABLE}
# Startup keys that are not settings.
_NOT_SETTINGS = frozenset({"user", "database", "options", "replication"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.$]*$")
DEPLOY_TIMEOUT = 10.0


class ParamsError(ValueError):
    """A startup parameter that cannot be applied (bad name or options syntax)."""


def parse_options(options: str) -> dict[str, str]:
    """`options` as libpq sends it: '-c key=value' / '--key=value', backslash escapes spaces."""
    words: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    settings: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            pair = words[i + 1]
            i += 2
        elif word.startswith("-c") and len(word) > 2:
            pair, i = word[2:], i + 1
        elif word.startswith("--"):
            pair, i = word[2:], i + 1
        else:
            raise ParamsError(f"unsupported startup option {word!r} (only -c name=value)")
        name, sep, value = pair.partition("=")
        if not sep:
            raise ParamsError(f"startup option {pair!r} has no value")
        settings[name.replace("-", "_")] = value
    return settings


def quote_literal(value: str) -> str:
    escaped = value.replace("'", "''")
    if "\\" in escaped:
        return "E'" + escaped.replace("\\", "\\\\") + "'"
    return "'" + escaped + "'"


def _canonical(name: str) -> str:
    return _REPORTED_LOWER.get(name.lower(), name)


class ClientParams:
    """What one client's session settings should be on any server it is attached to."""

    __slots__ = ("reported", "extra")

    def __init__(self, defaults: Mapping[str, str], startup: Mapping[str, str],
                 add_host: str | None = None) -> None:
        self.reported: dict[str, str] = {k: v for k, v in defaults.items()
                                         if k in REPORTED_SETTABLE}
        self.extra: dict[str, str] = {}  # settings PostgreSQL does not report back
        wanted = {k: v for k, v in startup.items()
                  if k not in _NOT_SETTINGS and not k.startswith("_pq_.")}
        wanted.update(parse_options(startup.get("options", "")))
        for name, value in wanted.items():
            if not _NAME.match(name):
                raise ParamsError(f"invalid parameter name {name!r}")
            name = _canonical(name)
            if name in REPORTED_SETTABLE and name in defaults:
                self.reported[name] = value
            else:
                self.extra[name] = value
        if add_host is not None:  # application_name_add_host: "app - host:port"
            app = self.reported.get("application_name", "")
            self.reported["application_name"] = f"{app} - {add_host}" if app else add_host

    def view(self, defaults: Mapping[str, str]) -> dict[str, str]:
        """ParameterStatus values to report to the client at login."""
        view = dict(defaults)
        view.update(self.reported)
        return view

    def note_reported(self, bodies: Iterable[bytes], server: ServerConn | None) -> None:
        """ParameterStatus seen while attached: the server's value and the client's own."""
        for body in bodies:
            name, _, rest = body.partition(b"\0")
            value = rest.rstrip(b"\0")
            key = name.decode("utf-8", "replace")
            text = value.decode("utf-8", "replace")
            if server is not None:
                server.params[key] = text
            if key in REPORTED_SETTABLE:
                self.reported[key] = text

    def deploy_sql_needed(self, defaults: Mapping[str, str]) -> bool:
        """True when the client asked for reported settings other than the defaults."""
        return any(defaults.get(name) != value for name, value in self.reported.items())

    def deploy_sql(self, server: ServerConn) -> str | None:
        statements = []
        for name, value in self.reported.items():
            if server.params.get(name) != value:
                statements.append(f"SET {name} = {quote_literal(value)}")
        for name, value in self.extra.items():
            if server.extra_settings.get(name) != value:
                statements.append(f"SET {name} = {quote_literal(value)}")
        for name in server.extra_settings.keys() - self.extra.keys():
            statements.append(f"RESET {name}")
        return "; ".join(statements) if statements else None

    async def deploy(self, server: ServerConn) -> None:
        """Make the server's settings this client's (one round trip, only when they differ)."""
        sql = self.deploy_sql(server)
        if sql is None:
            return
        await server.run_query(sql, DEPLOY_TIMEOUT)
        server.extra_settings = dict(self.extra)
        for name in self.reported:
            # PostgreSQL normalises values ('utf-8' -> 'UTF8'); adopt its spelling so the
            # next comparison matches instead of deploying again.
            if name in server.params:
                self.reported[name] = server.params[name]
