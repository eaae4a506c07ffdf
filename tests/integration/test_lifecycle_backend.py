"""PostgreSQL going away (issue 3, point 6): a terminated server errors its client and leaves
the pool, a restarted PostgreSQL is used again within seconds, a stopped one gives new clients
a clear error within pool_timeout / backend_connect_timeout_ms instead of a hang."""

from __future__ import annotations

import re
import time

import psycopg
import pytest
from helpers import backend_state, login_error, run_threads, wait_until

pytestmark = pytest.mark.timeout(30)


def _real_pid(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_server_terminated_mid_transaction(pg, ithaca, ithaca_config, pool):
    pg.execute("CREATE TABLE items (a int)")
    proc = ithaca(ithaca_config(pool=pool, pool_size=1, pool_timeout=5000))
    conn = psycopg.connect(proc.dsn())
    try:
        conn.execute("INSERT INTO items VALUES (1)")
        pid = _real_pid(conn)
        assert pg.scalar(f"SELECT pg_terminate_backend({pid})") == "t"
        wait_until(lambda: backend_state(pg, pid) == "", timeout=5, message="the backend to exit")

        def next_query(_i: int) -> BaseException | None:
            try:
                conn.execute("SELECT 1")
            except psycopg.Error as exc:
                return exc
            return None

        [error] = run_threads(next_query, 1, timeout=5)  # an error, not a hang
        assert isinstance(error, psycopg.OperationalError), repr(error)
        assert error.sqlstate in ("57P01", "08006"), (error.sqlstate, str(error))
    finally:
        conn.close()
    # the dead server left the pool (size 1): new clients get a new one and work
    for _ in range(3):
        with psycopg.connect(proc.dsn()) as fresh:
            assert _real_pid(fresh) != pid
            fresh.execute("INSERT INTO items VALUES (2)")
    assert pg.scalar("SELECT count(*) FROM items") == "3"


def test_idle_pooled_server_terminated(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=1))
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        pid = _real_pid(conn)
        # the server is idle in the pool now (transaction pooling, autocommit)
        assert pg.scalar(f"SELECT pg_terminate_backend({pid})") == "t"
        wait_until(lambda: backend_state(pg, pid) == "", timeout=5, message="the backend to exit")
        assert _real_pid(conn) != pid
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_postgres_restart_while_clients_are_connected(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=2, pool_timeout=5000))
    old = psycopg.connect(proc.dsn(), autocommit=True)
    try:
        old_pid = _real_pid(old)
        pg.restart("fast")
        restarted = time.monotonic()

        def fresh_client_works() -> bool:
            with psycopg.connect(proc.dsn(connect_timeout=3), autocommit=True) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)

        wait_until(fresh_client_works, timeout=8, interval=0.2,
                   message="new clients to be served after the restart")
        assert time.monotonic() - restarted < 8
        # the old client may see one error, then continues (or reconnects)
        errors = 0
        for _ in range(2):
            try:
                new_pid = _real_pid(old)
                break
            except psycopg.OperationalError:
                errors += 1
                if old.closed:
                    old.close()
                    old = psycopg.connect(proc.dsn(), autocommit=True)
        else:
            pytest.fail("the old client failed twice after the restart")
        assert errors <= 1
        assert new_pid != old_pid
    finally:
        old.close()


def _message(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.diag is not None else None
    return primary or str(exc)


def test_postgres_stopped_login_gets_a_clear_error(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=2, pool_timeout=2000,
                                extra_global="backend_connect_timeout_ms 1000"))
    pg.stop()
    started = time.monotonic()
    sqlstate, message = login_error(proc.port, timeout=15)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"the error took {elapsed:.1f}s"
    assert re.search(r"connect|server", message, re.I), message
    assert sqlstate, message


def test_postgres_stopped_after_use_gives_a_clear_error(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=2, pool_timeout=2000,
                                extra_global="backend_connect_timeout_ms 1000"))
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pg.stop()

    def attempt(_i: int) -> tuple[float, BaseException | None]:
        started = time.monotonic()
        try:
            with psycopg.connect(proc.dsn(connect_timeout=15), autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return time.monotonic() - started, exc
        return time.monotonic() - started, None

    [(elapsed, error)] = run_threads(attempt, 1, timeout=15)
    assert error is not None, "a query succeeded with PostgreSQL stopped"
    assert isinstance(error, psycopg.OperationalError), repr(error)
    assert elapsed < 5, f"the error took {elapsed:.1f}s"
    assert re.search(r"connect|server", _message(error), re.I), str(error)
