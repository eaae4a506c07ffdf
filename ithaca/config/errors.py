"""Configuration errors: every message names the file and line it is about.

ConfigError carries one or more "FILE:LINE: message" strings so a user sees all problems at once.
"""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(Exception):
    """An odyssey.conf could not be accepted; `.errors` lists each problem as "FILE:LINE: msg"."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


def at(file: str, line: int, message: str) -> str:
    """Format one diagnostic the way every config message is formatted."""
    return f"{file}:{line}: {message}"
