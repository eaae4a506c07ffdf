"""The codec must stay pure: importing it pulls in no asyncio, socket or ssl."""

from __future__ import annotations

import subprocess
import sys


def test_protocol_package_imports_no_io_modules() -> None:
    code = (
        "import sys, ithaca.protocol\n"
        "bad = {'asyncio', 'socket', 'ssl'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_public_api_is_exported() -> None:
    import ithaca.protocol as protocol

    for name in protocol.__all__:
        assert hasattr(protocol, name), name
