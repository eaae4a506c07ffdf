"""Command line: `ithaca CONFIG` runs the pooler in the foreground; `--check-config` validates
a config and reports errors at file:line; `--version` prints the version."""

from __future__ import annotations

import argparse
import asyncio
import sys

from . import __version__
from .config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ithaca",
        description="PostgreSQL connection pooler that reads Odyssey's odyssey.conf",
    )
    parser.add_argument("config", nargs="?", help="path to an odyssey.conf-format file")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config and exit (0 valid, 1 invalid)")
    parser.add_argument("--version", action="version", version=f"ithaca {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.config is None:
        _parser().print_usage(sys.stderr)
        print("ithaca: error: a config file is required", file=sys.stderr)
        return 2
    if args.check_config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        for warning in config.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{args.config}: config is valid")
        return 0
    from .instance import Instance

    try:
        instance = Instance(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return _run(instance.run())


def _run(coro) -> int:  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    sys.exit(main())
