"""Lexer for Odyssey's configuration language: strings, integers, bare words and braces.

Newlines carry no meaning (statements are delimited by their arity); `#` starts a comment.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .errors import ConfigError, at


class Kind(enum.Enum):
    STRING = "string"
    INT = "integer"
    WORD = "word"
    LBRACE = "'{'"
    RBRACE = "'}'"
    EOF = "end of file"


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    value: str | int
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def describe(self) -> str:
        """How the token is named in messages: `string`, `integer`, `'yes'`, `'{'`, ..."""
        if self.kind is Kind.WORD:
            return f"'{self.value}'"
        return self.kind.value

    def is_word(self, *words: str) -> bool:
        return self.kind is Kind.WORD and self.value in words


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_INT_RE = re.compile(r"-?[0-9]+\Z")
# A bare word runs until whitespace or one of the characters with a meaning of its own.
_WORD_END = frozenset(' \t\r\n\f\v{}"#')


def tokenize(text: str, file: str) -> list[Token]:
    """Split `text` into tokens ending with one EOF token; raises ConfigError on bad input."""
    tokens: list[Token] = []
    pos, line, length = 0, 1, len(text)
    while pos < length:
        char = text[pos]
        if char == "\n":
            line += 1
            pos += 1
        elif char in " \t\r\f\v":
            pos += 1
        elif char == "#":
            end = text.find("\n", pos)
            pos = length if end < 0 else end
        elif char == "{":
            tokens.append(Token(Kind.LBRACE, "{", file, line))
            pos += 1
        elif char == "}":
            tokens.append(Token(Kind.RBRACE, "}", file, line))
            pos += 1
        elif char == '"':
            value, pos = _read_string(text, pos + 1, file, line)
            tokens.append(Token(Kind.STRING, value, file, line))
        else:
            start = pos
            while pos < length and text[pos] not in _WORD_END:
                pos += 1
            word = text[start:pos]
            if _INT_RE.match(word):
                tokens.append(Token(Kind.INT, int(word), file, line))
            else:
                tokens.append(Token(Kind.WORD, word, file, line))
    tokens.append(Token(Kind.EOF, "", file, line))
    return tokens


def _read_string(text: str, pos: int, file: str, line: int) -> tuple[str, int]:
    """Read a double-quoted string body starting after the opening quote."""
    parts: list[str] = []
    length = len(text)
    while pos < length:
        char = text[pos]
        if char == '"':
            return "".join(parts), pos + 1
        if char == "\n":
            break
        if char == "\\" and pos + 1 < length and text[pos + 1] != "\n":
            escaped = text[pos + 1]
            # An unknown escape keeps its backslash: regexes and paths stay intact.
            parts.append(_ESCAPES.get(escaped, "\\" + escaped))
            pos += 2
            continue
        parts.append(char)
        pos += 1
    raise ConfigError([at(file, line, "unterminated string")])
