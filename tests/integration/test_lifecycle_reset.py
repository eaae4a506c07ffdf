"""Server reset when a client detaches (issue 3, point 2), in Odyssey's order: an open
transaction is rolled back (pool_rollback yes) or the server closed (pool_rollback no);
DISCARD ALL in session pooling (pool_discard yes); any failure or timeout closes the server."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from helpers import backend_state, wait_until

pytestmark = pytest.mark.timeout(30)


def _real_pid(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def _last_query(pg, pid: int) -> str:
    return pg.scalar(f"SELECT query FROM pg_stat_activity WHERE pid = {pid}")


def _leave_in_transaction(pg, proc) -> int:
    """A client inserts a row in an open transaction and disconnects (with Terminate)."""
    conn = psycopg.connect(proc.dsn())
    conn.execute("INSERT INTO items VALUES (1)")
    pid = _real_pid(conn)
    assert backend_state(pg, pid) == "idle in transaction"
    conn.close()  # psycopg sends Terminate; the transaction is still open on the server
    return pid


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_pool_rollback_yes_rolls_back_and_reuses(pg, ithaca, ithaca_config, pool):
    pg.execute("CREATE TABLE items (a int)")
    proc = ithaca(ithaca_config(pool=pool, pool_size=1, extra_route="pool_rollback yes"))
    pid = _leave_in_transaction(pg, proc)
    wait_until(lambda: backend_state(pg, pid) == "idle", timeout=5,
               message="the open transaction to be rolled back")
    assert pg.scalar("SELECT count(*) FROM items") == "0"
    with psycopg.connect(proc.dsn(), autocommit=True) as nxt:
        assert _real_pid(nxt) == pid, "the rolled-back server was not reused"
        assert nxt.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert nxt.execute("SELECT count(*) FROM items").fetchone() == (0,)


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_pool_rollback_no_closes_the_server(pg, ithaca, ithaca_config, pool):
    pg.execute("CREATE TABLE items (a int)")
    proc = ithaca(ithaca_config(pool=pool, pool_size=1, extra_route="pool_rollback no"))
    pid = _leave_in_transaction(pg, proc)
    wait_until(lambda: backend_state(pg, pid) == "", timeout=5,
               message="the server left in a transaction to be closed")
    assert pg.scalar("SELECT count(*) FROM items") == "0"
    with psycopg.connect(proc.dsn(), autocommit=True) as nxt:
        assert _real_pid(nxt) != pid
        assert nxt.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_session_pooling_discard_all(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="session", pool_size=1, extra_route="pool_discard yes"))
    with psycopg.connect(proc.dsn(), autocommit=True) as first:
        pid = _real_pid(first)
        default_work_mem = first.execute("SHOW work_mem").fetchone()[0]
        first.execute("SET work_mem = '1234kB'")
        first.execute("SELECT set_config('ithaca.marker', 'left-behind', false)")
        first.execute("CREATE TEMP TABLE scratch (a int)")
        first.execute("PREPARE leftover AS SELECT 1")
        first.execute("SELECT pg_advisory_lock(4242)")
        assert first.execute("SHOW work_mem").fetchone() == ("1234kB",)
    wait_until(lambda: backend_state(pg, pid) == "idle" and "DISCARD ALL" in _last_query(pg, pid),
               timeout=5, message="DISCARD ALL to run on the released server")
    assert pg.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"
    with psycopg.connect(proc.dsn(), autocommit=True) as nxt:
        assert _real_pid(nxt) == pid, "the server was not reused"
        assert nxt.execute("SELECT to_regclass('pg_temp.scratch') IS NULL").fetchone() == (True,)
        assert nxt.execute("SHOW work_mem").fetchone() == (default_work_mem,)
        assert nxt.execute("SELECT coalesce(current_setting('ithaca.marker', true), '')"
                           ).fetchone() == ("",)
        assert nxt.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)


def test_session_pooling_pool_discard_no_keeps_state(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="session", pool_size=1, extra_route="pool_discard no"))
    with psycopg.connect(proc.dsn(), autocommit=True) as first:
        pid = _real_pid(first)
        first.execute("CREATE TEMP TABLE scratch (a int)")
    with psycopg.connect(proc.dsn(), autocommit=True) as nxt:
        assert _real_pid(nxt) == pid
        # no DISCARD ALL ran: the temp table of the previous client is still there
        assert nxt.execute("SELECT to_regclass('pg_temp.scratch') IS NOT NULL"
                           ).fetchone() == (True,)


def _next_client_pid(proc, out: dict) -> threading.Thread:
    """In a thread: a new client's server pid (it waits while the pool's only server is busy)."""

    def run() -> None:
        started = time.monotonic()
        try:
            with psycopg.connect(proc.dsn(connect_timeout=25), autocommit=True) as conn:
                out["pid"] = _real_pid(conn)
                out["no_scratch"] = conn.execute(
                    "SELECT to_regclass('pg_temp.scratch') IS NULL").fetchone()[0]
        except BaseException as exc:  # inspected by the test
            out["error"] = exc
        out["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _reset_blocked_on_a_lock(pg, proc, holder: psycopg.Connection) -> int:
    """A session-pooling client leaves a temp table that ``holder`` locks, so the reset's
    DISCARD ALL (it drops temp tables) waits for the lock. Returns the server's pid."""
    with psycopg.connect(proc.dsn(), autocommit=True) as first:
        pid = _real_pid(first)
        first.execute("CREATE TEMP TABLE scratch (a int)")
        schema = first.execute("SELECT nspname FROM pg_namespace "
                               "WHERE oid = pg_my_temp_schema()").fetchone()[0]
        holder.execute(f"LOCK TABLE {schema}.scratch IN ACCESS EXCLUSIVE MODE")
    wait_until(lambda: pg.scalar(
        f"SELECT wait_event_type FROM pg_stat_activity WHERE pid = {pid} "
        "AND state = 'active'") == "Lock", timeout=5, message="the reset to wait for the lock")
    return pid


def test_reset_failure_closes_the_server(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="session", pool_size=1, pool_timeout=20000))
    out: dict = {}
    with psycopg.connect(pg.dsn()) as holder:
        pid = _reset_blocked_on_a_lock(pg, proc, holder)
        thread = _next_client_pid(proc, out)  # waits: the only server is being reset
        # make the reset fail: cancel the blocked DISCARD ALL
        assert pg.scalar(f"SELECT pg_cancel_backend({pid})") == "t"
        wait_until(lambda: backend_state(pg, pid) != "active", timeout=5,
                   message="DISCARD ALL to fail")
        holder.rollback()  # an exiting backend drops its temp table: it needs the lock too
    thread.join(10)
    assert not thread.is_alive()
    assert "error" not in out, out
    assert out["pid"] != pid, "a server whose reset failed was reused"
    assert out["no_scratch"] is True
    wait_until(lambda: backend_state(pg, pid) == "", timeout=5,
               message="the server whose reset failed to be closed")


def test_reset_timeout_closes_the_server(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="session", pool_size=1, pool_timeout=20000))
    out: dict = {}
    with psycopg.connect(pg.dsn()) as holder:
        pid = _reset_blocked_on_a_lock(pg, proc, holder)
        # the lock is held until the next client is served: the reset can only time out
        thread = _next_client_pid(proc, out)
        thread.join(16)
        holder.rollback()
    assert not thread.is_alive(), "the reset never timed out"
    assert "error" not in out, out
    assert out["pid"] != pid, "a server whose reset timed out was reused"
    wait_until(lambda: backend_state(pg, pid) == "", timeout=5,
               message="the server whose reset timed out to be closed")
