"""odyssey.conf support: load a file (with includes) into an immutable, typed Config.

Errors raise ConfigError with "FILE:LINE: message" entries; unimplemented options become warnings.
"""

from __future__ import annotations

import os

from .errors import ConfigError
from .model import Config, Listen, Rule, Storage
from .parser import parse_text

__all__ = [
    "Config",
    "ConfigError",
    "Listen",
    "Rule",
    "Storage",
    "load_config",
    "parse_config_text",
]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check the config file at `path`; raises ConfigError."""
    file = os.fspath(path)
    try:
        with open(file, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError([f"{file}:0: cannot read config file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{file}:0: config file is not valid UTF-8"]) from None
    return parse_text(text, file)


def parse_config_text(text: str, path: str = "<string>") -> Config:
    """Parse config text as if read from `path` (includes resolve relative to its directory)."""
    return parse_text(text, path)
