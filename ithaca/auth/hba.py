"""The global hba_file: pg_hba.conf-like lines (local/host/hostssl/hostnossl, databases, users,
address ranges, a method) checked in order before routing; the first matching line decides."""

from __future__ import annotations

import ipaddress
import logging
import shlex
from dataclasses import dataclass

from ..protocol import SqlState

log = logging.getLogger("ithaca.auth")

CONNECTION_TYPES = ("local", "host", "hostssl", "hostnossl")
# allow/trust: use the route's authentication; deny/reject: refuse; md5/scram-sha-256: use that
# password method (with the route's secret) instead of the route's authentication.
METHODS = {"allow": "allow", "trust": "allow", "deny": "deny", "reject": "deny",
           "md5": "md5", "scram-sha-256": "scram-sha-256"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HbaError(Exception):
    """A line of the hba file cannot be parsed."""


class HbaRefused(Exception):
    """No line allows the connection, or a deny/reject line matched."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = SqlState.INVALID_AUTHORIZATION_SPECIFICATION


@dataclass(frozen=True, slots=True)
class HbaLine:
    conn_type: str  # local | host | hostssl | hostnossl
    databases: frozenset[str]  # names, or the keywords "all" / "sameuser"
    users: frozenset[str]  # names, or "all"
    network: Network | None  # None: any address (local lines, "all")
    method: str  # allow | deny | md5 | scram-sha-256
    line_no: int

    def matches(self, local: bool, ssl: bool, address: str | None, database: str,
                user: str) -> bool:
        if self.conn_type == "local":
            if not local:
                return False
        else:
            if local:
                return False
            if self.conn_type == "hostssl" and not ssl:
                return False
            if self.conn_type == "hostnossl" and ssl:
                return False
            if self.network is not None:
                try:
                    ip = ipaddress.ip_address(address or "")
                except ValueError:
                    return False
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                if ip.version != self.network.version or ip not in self.network:
                    return False
        if "all" not in self.databases and database not in self.databases and not (
                "sameuser" in self.databases and database == user):
            return False
        return "all" in self.users or user in self.users


@dataclass(frozen=True, slots=True)
class HbaRules:
    path: str
    lines: tuple[HbaLine, ...]

    def check(self, *, local: bool, ssl: bool, address: str | None, database: str,
              user: str) -> str:
        """The method of the first matching line ("allow", "md5", "scram-sha-256");
        raise HbaRefused for a deny line or when nothing matches."""
        for line in self.lines:
            if line.matches(local, ssl, address, database, user):
                if line.method == "deny":
                    raise HbaRefused(f'hba file rejects connection for host "{address or "local"}"'
                                     f', user "{user}", database "{database}", '
                                     f'{"SSL encryption" if ssl else "no encryption"}')
                return line.method
        raise HbaRefused(f'no hba file entry for host "{address or "local"}", user "{user}", '
                         f'database "{database}", {"SSL encryption" if ssl else "no encryption"}')


def _names(field: str) -> frozenset[str]:
    # "a,b" or "a", "b" quoted: shlex already removed quotes; split remaining commas.
    return frozenset(part for part in field.split(",") if part)


def _network(text: str, mask: str | None, line_no: int) -> Network | None:
    if text in ("all", "0.0.0.0/0", "::/0") and mask is None:
        return None if text == "all" else ipaddress.ip_network(text)
    try:
        if mask is not None:
            netmask = ipaddress.ip_address(mask)
            prefix = ipaddress.ip_network(f"0.0.0.0/{mask}" if netmask.version == 4
                                          else f"::/{mask}").prefixlen
            return ipaddress.ip_network(f"{text}/{prefix}", strict=False)
        if "/" not in text:
            raise ValueError("an address range needs a /prefix or a netmask column")
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise HbaError(f"line {line_no}: invalid address {text!r}: {exc}") from None


def parse_hba(text: str, path: str = "<hba>") -> HbaRules:
    lines: list[HbaLine] = []
    for line_no, raw in enumerate(text.splitlines(), 1):
        try:
            fields = shlex.split(raw, comments=True)
        except ValueError as exc:
            raise HbaError(f"{path}:{line_no}: {exc}") from None
        if not fields:
            continue
        conn_type = fields[0].lower()
        if conn_type not in CONNECTION_TYPES:
            raise HbaError(f"{path}:{line_no}: unknown connection type {fields[0]!r}")
        need = 4 if conn_type == "local" else 5
        if len(fields) < need:
            raise HbaError(f"{path}:{line_no}: expected {need} fields, got {len(fields)}")
        network: Network | None = None
        if conn_type == "local":
            method_at = 3
        else:
            mask: str | None = None
            method_at = 4
            if len(fields) > 5 and fields[4].lower() not in METHODS:
                mask, method_at = fields[4], 5  # "address netmask method"
            try:
                network = _network(fields[3], mask, line_no)
            except HbaError as exc:
                raise HbaError(f"{path}:{exc}") from None
        method = METHODS.get(fields[method_at].lower())
        if method is None:
            raise HbaError(f"{path}:{line_no}: unsupported method {fields[method_at]!r} "
                           f"(use {', '.join(METHODS)})")
        if len(fields) > method_at + 1:
            raise HbaError(f"{path}:{line_no}: unexpected options after the method")
        lines.append(HbaLine(conn_type, _names(fields[1]), _names(fields[2]), network, method,
                             line_no))
    return HbaRules(path, tuple(lines))


def load_hba(path: str) -> HbaRules:
    """Read and parse an hba file; raise HbaError (also for an unreadable file)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise HbaError(f"cannot read hba_file {path}: {exc.strerror or exc}") from None
    return parse_hba(text, path)


class HbaCache:
    """The rules for the current config, read once per config object (so a reload re-reads the
    file); a file that stops parsing keeps the last good rules and logs an error."""

    def __init__(self) -> None:
        self._config: object | None = None
        self._rules: HbaRules | None = None

    def rules_for(self, config: object, path: str) -> HbaRules:
        if self._rules is not None and self._config is config and self._rules.path == path:
            return self._rules
        try:
            rules = load_hba(path)
        except HbaError as exc:
            if self._rules is not None and self._rules.path == path:
                log.error("%s; keeping the previous hba rules", exc)
                self._config = config
                return self._rules
            raise
        self._config, self._rules = config, rules
        return rules


hba_cache = HbaCache()
