"""Graceful shutdown on SIGTERM/SIGINT (issue 3, point 5): new connections refused at once,
idle clients closed right away, an active client finishes its transaction (up to
graceful_shutdown_timeout_ms), then everything is closed; a second SIGTERM exits at once; the
pid file is written and removed; SIGUSR1 reopens the log file."""

from __future__ import annotations

import signal
import threading
import time

import psycopg
import pytest
from helpers import running_query_pid, wait_readable, wait_until

pytestmark = pytest.mark.timeout(30)


def _refused(proc) -> bool:
    try:
        conn = psycopg.connect(proc.dsn(connect_timeout=2), autocommit=True)
    except psycopg.OperationalError:
        return True
    with conn:
        try:
            conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown(pg, ithaca, ithaca_config, tmp_path, sig):
    pg.execute("CREATE TABLE items (a int)")
    pid_file = tmp_path / "ithaca.pid"
    proc = ithaca(ithaca_config(pool="transaction", pool_size=2, extra_global=(
        f'pid_file "{pid_file}"\ngraceful_shutdown_timeout_ms 10000')))
    assert pid_file.read_text().strip() == str(proc.pid)
    active = psycopg.connect(proc.dsn())
    idle = psycopg.connect(proc.dsn(), autocommit=True)
    try:
        assert idle.execute("SELECT 1").fetchone() == (1,)
        active.execute("INSERT INTO items VALUES (1)")
        out: dict = {}

        def finish_transaction() -> None:
            try:
                active.execute("SELECT pg_sleep(1)")
                active.commit()
                out["committed"] = True
            except BaseException as exc:  # inspected by the test
                out["error"] = exc

        thread = threading.Thread(target=finish_transaction, daemon=True)
        thread.start()
        wait_until(lambda: running_query_pid(pg, "SELECT pg_sleep(1)"), timeout=5,
                   message="the active client's pg_sleep(1)")
        signalled = time.monotonic()
        proc.send_signal(sig)
        # new connections are refused at once
        wait_until(lambda: _refused(proc), timeout=1.5, message="new connections to be refused")
        # the idle client is closed right away
        assert wait_readable(idle.pgconn.socket, 1.5), "the idle client was not closed"
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 1")
        # the active client's transaction completes and commits
        thread.join(5)
        assert not thread.is_alive()
        assert out.get("committed"), out
        assert pg.scalar("SELECT count(*) FROM items") == "1"
        # then ithaca exits on its own, long before graceful_shutdown_timeout_ms
        assert proc.wait_exit(5) == 0
        assert time.monotonic() - signalled < 6
        assert not pid_file.exists()
    finally:
        active.close()
        idle.close()


def _start_long_query(active, pg, seconds: int) -> tuple[threading.Thread, dict]:
    """Run pg_sleep(seconds) on `active` in a thread; `out` gets "finished" or "error"."""
    out: dict = {}
    sql = f"SELECT pg_sleep({seconds})"

    def long_query() -> None:
        try:
            active.execute(sql)
            out["finished"] = True
        except BaseException as exc:  # inspected by the test
            out["error"] = exc

    thread = threading.Thread(target=long_query, daemon=True)
    thread.start()
    wait_until(lambda: running_query_pid(pg, sql), timeout=5, message="the long query")
    return thread, out


def test_graceful_shutdown_timeout_closes_everything(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=2,
                                extra_global="graceful_shutdown_timeout_ms 1000"))
    active = psycopg.connect(proc.dsn())
    try:
        active.execute("SELECT 1")
        thread, out = _start_long_query(active, pg, 10)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait_exit(5)
        assert time.monotonic() - signalled < 4, "ithaca waited past the graceful timeout"
        assert time.monotonic() - signalled >= 0.8, "ithaca did not wait for the active client"
        thread.join(5)
        assert not thread.is_alive(), "the active client was left hanging"
        assert isinstance(out.get("error"), psycopg.OperationalError), out
    finally:
        active.close()


def test_second_sigterm_exits_immediately(pg, ithaca, ithaca_config, tmp_path):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=2,
                                extra_global="graceful_shutdown_timeout_ms 20000"))
    active = psycopg.connect(proc.dsn())
    try:
        active.execute("SELECT 1")
        thread, out = _start_long_query(active, pg, 8)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(proc), timeout=1.5, message="the shutdown to begin")
        assert proc.poll() is None, "ithaca did not wait for the active client"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait_exit(3)
        assert time.monotonic() - signalled < 2
        thread.join(5)
        assert not thread.is_alive()
        assert "finished" not in out
    finally:
        active.close()


def test_sigusr1_reopens_the_log_file(pg, ithaca, ithaca_config, tmp_path):
    log_file = tmp_path / "ithaca-file.log"
    proc = ithaca(ithaca_config(extra_global=f'log_file "{log_file}"'))
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    wait_until(lambda: log_file.exists() and "login" in log_file.read_text(), timeout=5,
               message="a login line in the log file")
    rotated = tmp_path / "ithaca-file.log.1"
    log_file.rename(rotated)
    proc.send_signal(signal.SIGUSR1)
    wait_until(log_file.exists, timeout=5, message="a new log file after SIGUSR1")
    assert proc.poll() is None, "SIGUSR1 killed ithaca"
    rotated_size = rotated.stat().st_size
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
    wait_until(lambda: "login" in log_file.read_text(), timeout=5,
               message="the next login to be logged in the new file")
    assert rotated.stat().st_size == rotated_size, "lines still go to the renamed file"
