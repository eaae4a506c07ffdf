"""The command line: --version, --check-config with errors at file:line, and a clean stop on
SIGTERM/SIGINT that removes the pid file."""

from __future__ import annotations

import signal
import subprocess
import sys

import psycopg
import pytest
from helpers import REPO_ROOT

ITHACA = [sys.executable, "-m", "ithaca"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ITHACA, *args], capture_output=True, text=True, timeout=30,
                          cwd=REPO_ROOT)


def test_version():
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("ithaca ")


def test_check_config_valid_and_warns(tmp_path):
    path = tmp_path / "ok.conf"
    path.write_text('listen {\n\tport 6432\n}\nresolvers 2\nstorage "pg" {\n\ttype "remote"\n}\n'
                    'database default {\n\tuser default {\n\t\tauthentication "none"\n'
                    '\t\tstorage "pg"\n\t\tpool "session"\n\t}\n}\n')
    result = _run("--check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert f"{path}:4:" in result.stderr and "resolvers" in result.stderr


def test_check_config_invalid_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text('listen {\n\tport 6432\n\tno_such_option 1\n}\n')
    result = _run("--check-config", str(path))
    assert result.returncode == 1
    assert f"{path}:3:" in result.stderr
    assert "no_such_option" in result.stderr


def test_running_with_an_invalid_config_exits_1(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text("daemonize yes\n")
    result = _run(str(path))
    assert result.returncode == 1
    assert f"{path}:1:" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_exits_cleanly_and_removes_pid_file(tmp_path, ithaca, ithaca_config, sig):
    pid_file = tmp_path / "ithaca.pid"
    proc = ithaca(ithaca_config(extra_global=f'pid_file "{pid_file}"'))
    assert pid_file.read_text().strip() == str(proc.pid)
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    proc.send_signal(sig)
    assert proc.wait_exit(10) == 0
    assert not pid_file.exists()
