"""Recursive-descent parser for odyssey.conf: includes, blocks, typed values, cross-checks.

It collects option-level errors and goes on; a syntax error stops it. The result is a Config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import ConfigError, at
from .lexer import Kind, Token, tokenize
from .model import Config, Listen, Rule, Storage
from .options import (
    GLOBAL_OPTIONS,
    LISTEN_OPTIONS,
    NO_EFFECT_VALUES,
    RULE_OPTIONS,
    STORAGE_OPTIONS,
    OptionSpec,
    ValueKind,
)

_UNSET = object()  # _value() found no usable value (the error is already recorded)
_INVALID = object()  # stored for an option whose value was bad, so "missing X" stays quiet


class _Fatal(Exception):
    """Parsing cannot go on; the message is already in the parser's error list."""


@dataclass(slots=True)
class _Frame:
    file: str
    realpath: str
    tokens: list[Token]
    pos: int = 0


class _TokenStream:
    """Tokens of the root file with included files spliced in where `include` appears."""

    def __init__(self, text: str, file: str) -> None:
        self._frames = [_Frame(file, _real(file), tokenize(text, file))]

    def peek(self) -> Token:
        while True:
            frame = self._frames[-1]
            token = frame.tokens[frame.pos]
            if token.kind is Kind.EOF and len(self._frames) > 1:
                self._frames.pop()  # an included file ended: go on in the includer
                continue
            return token

    def next(self) -> Token:
        token = self.peek()
        if token.kind is not Kind.EOF:
            self._frames[-1].pos += 1
        return token

    def include(self, include_token: Token, target: str) -> str | None:
        """Splice in `target` (relative to the including file); returns an error or None."""
        base = os.path.dirname(include_token.file)
        path = os.path.normpath(os.path.join(base, target))
        real = _real(path)
        chain = [frame.file for frame in self._frames]
        if any(frame.realpath == real for frame in self._frames):
            return "include cycle: " + " -> ".join([*chain, path])
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            return f"cannot read include file '{path}': {exc.strerror or exc}"
        except UnicodeDecodeError:
            return f"include file '{path}' is not valid UTF-8"
        self._frames.append(_Frame(path, real, tokenize(text, path)))
        return None


def _real(path: str) -> str:
    return os.path.realpath(path) if not path.startswith("<") else path


@dataclass(slots=True)
class _RawRule:
    database: str | None
    user: str | None
    token: Token
    values: dict[str, Any] = field(default_factory=dict)
    storage_token: Token | None = None


class Parser:
    """Turns one root file (plus includes) into a Config, or raises ConfigError."""

    def __init__(self, text: str, path: str) -> None:
        self._path = path
        self._text = text
        self._errors: list[str] = []
        self._warnings: list[str] = []
        self._globals: dict[str, Any] = {}
        self._listens: list[Listen] = []
        self._storages: dict[str, Storage] = {}
        self._rules: list[_RawRule] = []
        self._stream: _TokenStream

    # -- entry point -----------------------------------------------------------------------
    def parse(self) -> Config:
        try:
            self._stream = _TokenStream(self._text, self._path)
            self._statements(self._global_statement, closing=None)
        except _Fatal:
            raise ConfigError(self._errors) from None
        except ConfigError as exc:  # lexer error
            raise ConfigError(self._errors + exc.errors) from None
        config = self._build()
        if self._errors:
            raise ConfigError(self._errors)
        return config

    # -- diagnostics -----------------------------------------------------------------------
    def _error(self, token: Token, message: str) -> None:
        self._errors.append(at(token.file, token.line, message))

    def _fatal(self, token: Token, message: str) -> _Fatal:
        self._error(token, message)
        return _Fatal()

    def _warn_unsupported(self, token: Token, what: str, name: str) -> None:
        self._warnings.append(
            at(
                token.file,
                token.line,
                f"{what} '{name}' is accepted but not supported by ithaca yet; it has no effect",
            )
        )

    # -- statements and blocks -------------------------------------------------------------
    def _statements(self, handle: Any, closing: Token | None) -> None:
        """Run `handle(keyword_token)` per statement until '}' (or EOF at top level)."""
        while True:
            token = self._stream.peek()
            if token.kind is Kind.EOF:
                if closing is not None:
                    raise self._fatal(closing, "block opened here is not closed ('}' missing)")
                return
            if token.kind is Kind.RBRACE:
                if closing is None:
                    raise self._fatal(token, "unexpected '}' outside of any block")
                self._stream.next()
                return
            if token.kind is not Kind.WORD:
                raise self._fatal(token, f"unexpected {token.describe()}, expected an option name")
            self._stream.next()
            if token.value == "include":
                self._include(token)
            else:
                handle(token)

    def _include(self, keyword: Token) -> None:
        target = self._stream.next()
        if target.kind is not Kind.STRING:
            raise self._fatal(
                target, f"include expects a file name string, got {target.describe()}"
            )
        try:
            problem = self._stream.include(keyword, str(target.value))
        except ConfigError as exc:  # a lexer error inside the included file
            self._errors.extend(exc.errors)
            raise _Fatal() from None
        if problem is not None:
            self._error(keyword, problem)

    def _open_block(self, keyword: Token) -> Token:
        token = self._stream.next()
        if token.kind is not Kind.LBRACE:
            raise self._fatal(
                token, f"unexpected {token.describe()}, expected '{{' after '{keyword.value}'"
            )
        return token

    def _skip_block(self, keyword: Token) -> None:
        """Skip an unsupported sub-block: any name tokens, then a balanced { ... }."""
        token = self._stream.peek()
        while token.kind in (Kind.STRING, Kind.INT, Kind.WORD):
            self._stream.next()
            token = self._stream.peek()
        opening = self._open_block(keyword)
        depth = 1
        while depth:
            token = self._stream.next()
            if token.kind is Kind.EOF:
                raise self._fatal(opening, "block opened here is not closed ('}' missing)")
            if token.kind is Kind.LBRACE:
                depth += 1
            elif token.kind is Kind.RBRACE:
                depth -= 1

    def _name(self, keyword: Token, allow_default: bool) -> tuple[str | None, Token]:
        token = self._stream.next()
        if token.kind is Kind.STRING:
            return str(token.value), token
        if allow_default and token.is_word("default"):
            return None, token
        expected = "a quoted name or default" if allow_default else "a quoted name"
        raise self._fatal(token, f"'{keyword.value}' expects {expected}, got {token.describe()}")

    # -- option values -----------------------------------------------------------------------
    def _option(
        self, keyword: Token, table: dict[str, OptionSpec], values: dict[str, Any], where: str
    ) -> None:
        name = str(keyword.value)
        spec = table.get(name)
        if spec is None:
            self._error(keyword, f"unknown option '{name}' in {where}")
            self._skip_unknown_value()
            return
        if spec.kind is ValueKind.BLOCK:
            self._skip_block(keyword)
            self._warn_unsupported(keyword, "block", name)
            return
        value = self._value(keyword, spec)
        if value is _UNSET:
            values.setdefault(name, _INVALID)
            return
        if spec.kind is ValueKind.COMMON_NAME:
            if value is None:
                values["auth_common_name_default"] = True
            else:
                values[name] = (*_listed(values, name), value)
        elif spec.kind is ValueKind.STR_LIST:
            values[name] = (*_listed(values, name), value)
        else:
            values[name] = value  # repeated options: the last one wins, as in Odyssey
        if not spec.implemented and value not in NO_EFFECT_VALUES.get(name, ()):
            self._warn_unsupported(keyword, "option", name)

    def _skip_unknown_value(self) -> None:
        # An unknown option has unknown arity; take what plainly looks like its values.
        token = self._stream.peek()
        while token.kind in (Kind.STRING, Kind.INT) or token.is_word("yes", "no", "default"):
            self._stream.next()
            token = self._stream.peek()
        if token.kind is Kind.LBRACE:
            self._skip_block(token)

    def _value(self, keyword: Token, spec: OptionSpec) -> Any:
        """Read and check one value; on a type error record it and return _UNSET."""
        name = keyword.value
        token = self._stream.peek()
        if token.kind in (Kind.STRING, Kind.INT, Kind.WORD):
            self._stream.next()
        kind = spec.kind
        got = token.describe()
        if kind is ValueKind.BOOL:
            if token.is_word("yes", "no"):
                return token.value == "yes"
            self._error(token, f"option '{name}' expects yes or no, got {got}")
        elif kind in (ValueKind.UINT, ValueKind.INT):
            if token.kind is Kind.INT:
                if kind is ValueKind.UINT and int(token.value) < 0:
                    self._error(token, f"option '{name}' must not be negative, got {token.value}")
                    return _UNSET
                return token.value
            self._error(token, f"option '{name}' expects an integer, got {got}")
        elif kind in (ValueKind.STR, ValueKind.STR_LIST):
            if token.kind is Kind.STRING:
                return token.value
            self._error(token, f"option '{name}' expects a string, got {got}")
        elif kind is ValueKind.ENUM:
            if token.kind is Kind.STRING and token.value in spec.choices:
                return token.value
            shown = f"'{token.value}'" if token.kind is Kind.STRING else got
            self._error(
                token, f"option '{name}' must be one of {', '.join(spec.choices)}; got {shown}"
            )
        elif kind is ValueKind.WORKERS:
            if token.kind is Kind.INT and int(token.value) > 0:
                return token.value
            if token.value == "auto" and token.kind in (Kind.STRING, Kind.WORD):
                return 0
            self._error(token, f"option '{name}' expects a positive integer or \"auto\", got {got}")
        elif kind is ValueKind.COMMON_NAME:
            if token.kind is Kind.STRING:
                return token.value
            if token.is_word("default"):
                return None
            self._error(token, f"option '{name}' expects a string or default, got {got}")
        return _UNSET

    # -- the four kinds of block -------------------------------------------------------------
    def _global_statement(self, keyword: Token) -> None:
        if keyword.value == "listen":
            self._listen(keyword)
        elif keyword.value == "storage":
            self._storage(keyword)
        elif keyword.value == "database":
            self._database(keyword)
        else:
            self._option(keyword, GLOBAL_OPTIONS, self._globals, "global section")
            if keyword.value == "daemonize" and self._globals.get("daemonize") is True:
                self._error(
                    keyword, "daemonize yes is not supported; run ithaca under a service manager"
                )
                self._globals["daemonize"] = False

    def _listen(self, keyword: Token) -> None:
        opening = self._open_block(keyword)
        values: dict[str, Any] = {}
        self._statements(
            lambda tok: self._option(tok, LISTEN_OPTIONS, values, "listen block"), opening
        )
        location = keyword.where
        tls = values.get("tls", "disable")
        if tls not in ("disable", _INVALID) and not (
            values.get("tls_cert_file") and values.get("tls_key_file")
        ):
            self._error(keyword, f'listen with tls "{tls}" needs tls_cert_file and tls_key_file')
        if tls in ("verify_ca", "verify_full") and not values.get("tls_ca_file"):
            self._error(keyword, f'listen with tls "{tls}" needs tls_ca_file')
        self._check_port(keyword, values)
        self._listens.append(Listen(**_valid(values), location=location))

    def _storage(self, keyword: Token) -> None:
        name, name_token = self._name(keyword, allow_default=False)
        assert name is not None
        opening = self._open_block(keyword)
        values: dict[str, Any] = {}
        self._statements(
            lambda tok: self._option(tok, STORAGE_OPTIONS, values, "storage block"), opening
        )
        if name in self._storages:
            self._error(
                name_token,
                f"duplicate storage '{name}' (first defined at {self._storages[name].location})",
            )
            return
        storage_type = values.pop("type", None)
        if storage_type is None:
            self._error(keyword, f'storage \'{name}\' has no type ("remote" or "local")')
        if not isinstance(storage_type, str):
            storage_type = "remote"
        self._check_port(keyword, values)
        self._storages[name] = Storage(
            name=name, type=storage_type, location=keyword.where, **_valid(values)
        )

    def _database(self, keyword: Token) -> None:
        database, _ = self._name(keyword, allow_default=True)
        opening = self._open_block(keyword)

        def user_statement(token: Token) -> None:
            if token.value != "user":
                self._error(token, f"unknown option '{token.value}' in database block")
                self._skip_unknown_value()
                return
            self._user(token, database)

        self._statements(user_statement, opening)

    def _user(self, keyword: Token, database: str | None) -> None:
        user, _ = self._name(keyword, allow_default=True)
        extra = self._stream.peek()
        if extra.kind is Kind.STRING:
            # Odyssey's `user "name" "addr/mask" { }` narrows a rule to client addresses.
            # Dropping the mask would widen who the rule admits, so refuse it.
            self._stream.next()
            self._error(extra, "client address ranges on user blocks are not supported by ithaca")
        opening = self._open_block(keyword)
        raw = _RawRule(database, user, keyword)

        def rule_statement(token: Token) -> None:
            if token.value == "storage":
                raw.storage_token = self._stream.peek()
            self._option(token, RULE_OPTIONS, raw.values, "user block")

        self._statements(rule_statement, opening)
        self._rules.append(raw)

    def _check_port(self, keyword: Token, values: dict[str, Any]) -> None:
        port = values.get("port")
        if isinstance(port, int) and not 1 <= port <= 65535:
            self._error(keyword, f"port {port} is out of range 1..65535")

    # -- cross-checks and the final model ----------------------------------------------------
    def _build(self) -> Config:
        rules: list[Rule] = []
        seen: dict[tuple[str | None, str | None], _RawRule] = {}
        for raw in self._rules:
            key = (raw.database, raw.user)
            first = seen.get(key)
            if first is not None:
                self._error(
                    raw.token,
                    f"duplicate rule for database {_show(raw.database)} user {_show(raw.user)} "
                    f"(first defined at {first.token.where})",
                )
                continue
            seen[key] = raw
            rule = self._build_rule(raw)
            if rule is not None:
                rules.append(rule)
        self._globals = _valid(self._globals)
        if not self._listens:
            eof = self._stream.peek()
            self._error(eof, "no listen block: at least one listen { } is required")
        return Config(
            path=self._path,
            **self._globals,
            listens=tuple(self._listens),
            storages=MappingProxyType(dict(self._storages)),
            rules=tuple(rules),
            warnings=tuple(self._warnings),
        )

    def _build_rule(self, raw: _RawRule) -> Rule | None:
        values = dict(raw.values)
        what = f"rule for database {_show(raw.database)} user {_show(raw.user)}"
        ok = True
        if "authentication" not in values:
            self._error(raw.token, f"{what} has no 'authentication'")
            ok = False
        storage_name = values.pop("storage", None)
        storage = None
        if storage_name is None:
            self._error(raw.token, f"{what} has no 'storage'")
            ok = False
        elif storage_name is _INVALID:
            ok = False
        else:
            storage = self._storages.get(storage_name)
            if storage is None:
                token = raw.storage_token or raw.token
                self._error(token, f"storage '{storage_name}' is not defined")
                ok = False
        if not ok or storage is None or values.get("authentication") is _INVALID:
            return None
        return Rule(
            database=raw.database,
            user=raw.user,
            storage=storage,
            location=raw.token.where,
            **_valid(values),
        )


def _listed(values: dict[str, Any], name: str) -> tuple[Any, ...]:
    current = values.get(name, ())
    return current if isinstance(current, tuple) else ()


def _valid(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not _INVALID}


def _show(name: str | None) -> str:
    return "default" if name is None else f"'{name}'"


def parse_text(text: str, path: str) -> Config:
    return Parser(text, path).parse()
