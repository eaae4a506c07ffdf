"""Issue 4, point 6: LISTEN/NOTIFY.  Works in session pooling; in transaction pooling a
client that LISTENs is pinned to its server until UNLISTEN or disconnect, and notifications
reach it.  NOTIFY is sent directly to PostgreSQL (and through ithaca by another client)."""

from __future__ import annotations

import threading

import psycopg
import pytest
from helpers import ServerPinner, wait_until

# a hung pooler fails the test quickly instead of after the suite-wide 120 s
pytestmark = pytest.mark.timeout(30)

TIMEOUT = 10.0


@pytest.fixture(params=["direct", "session", "transaction"])
def listen_target(request, pg, ithaca, ithaca_config):
    if request.param == "direct":
        return pg
    return ithaca(ithaca_config(pool=request.param, pool_size=2, pool_timeout=10000))


def connect(target):
    # unnamed statements only: named ones are test_extended_pstmt.py's subject
    return psycopg.connect(target.dsn(), autocommit=True, prepare_threshold=None)


def _notifies(conn, n: int = 1, timeout: float = 5.0) -> list:
    return [(x.channel, x.payload) for x in conn.notifies(timeout=timeout, stop_after=n)]


def test_listen_notify_reaches_the_listener(pg, listen_target):
    with connect(listen_target) as a, \
            connect(listen_target) as other:
        a.execute("LISTEN ch_main")
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        # a few unrelated statements in between (transactions in transaction pooling)
        for i in range(3):
            assert a.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        pg.execute("NOTIFY ch_main, 'from postgres'")
        assert _notifies(a) == [("ch_main", "from postgres")]
        # a NOTIFY from another client of the same pooler, twice
        other.execute("NOTIFY ch_main, 'from a client'")
        other.execute("SELECT pg_notify('ch_main', 'again')")
        assert _notifies(a, 2) == [("ch_main", "from a client"), ("ch_main", "again")]
        assert a.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
        a.execute("UNLISTEN ch_main")
        pg.execute("NOTIFY ch_main, 'not for you'")
        assert a.execute("SELECT 'still fine'").fetchone() == ("still fine",)
        assert _notifies(a, timeout=0.3) == []


def test_listener_is_pinned_in_transaction_pooling(pg, ithaca, ithaca_config):
    """pool_size 2: the listener keeps its server; everybody else shares the other one;
    after UNLISTEN both servers are available again."""
    proc = ithaca(ithaca_config(pool="transaction", pool_size=2, pool_timeout=10000))
    with connect(proc) as a, \
            connect(proc) as b, \
            connect(proc) as c:
        a.execute("LISTEN ch_pin")
        pid_a = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        others: set[int] = set()
        for _ in range(10):
            for conn in (b, c):
                with conn.transaction():
                    others.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            assert a.execute("SELECT pg_backend_pid()").fetchone() == (pid_a,)
        assert pid_a not in others, "another client got the listener's server"
        assert len(others) == 1
        # while b holds the other server in a transaction, c must wait (it cannot get a's)
        b.execute("BEGIN")
        b.execute("SELECT 1")
        done = threading.Event()
        got: list = []

        def run_c() -> None:
            got.append(c.execute("SELECT pg_backend_pid()").fetchone()[0])
            done.set()

        thread = threading.Thread(target=run_c, daemon=True)
        thread.start()
        assert not done.wait(0.5), "the listener's server was given to another client"
        pg.execute("NOTIFY ch_pin, 'p1'")
        assert _notifies(a) == [("ch_pin", "p1")]
        b.execute("COMMIT")
        assert done.wait(TIMEOUT)
        thread.join(TIMEOUT)
        assert got != [pid_a]
        # UNLISTEN releases the pin: two holders can now take both servers
        a.execute("UNLISTEN *")
        with ServerPinner(proc.dsn(), 2) as pins:
            assert pid_a in pins.pids


def test_pinned_listener_with_pool_size_one(pg, ithaca, ithaca_config):
    """pool_size 1: a second client waits while the listener is pinned, gets the server
    after UNLISTEN, and is not listening to anything."""
    proc = ithaca(ithaca_config(pool="transaction", pool_size=1, pool_timeout=10000))
    with connect(proc) as a, \
            connect(proc) as b:
        a.execute("LISTEN ch_one")
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        done = threading.Event()
        got: list = []

        def run_b() -> None:
            got.append(b.execute(
                "SELECT pg_backend_pid(), (SELECT count(*) FROM pg_listening_channels())"
            ).fetchone())
            done.set()

        thread = threading.Thread(target=run_b, daemon=True)
        thread.start()
        assert not done.wait(0.5), "the listener's server was given to another client"
        pg.execute("NOTIFY ch_one, 'x'")
        assert _notifies(a) == [("ch_one", "x")]
        a.execute("UNLISTEN ch_one")
        assert done.wait(TIMEOUT), "UNLISTEN did not release the server"
        thread.join(TIMEOUT)
        assert got == [(pid, 0)]
        pg.execute("NOTIFY ch_one, 'nobody listens'")
        assert _notifies(b, timeout=0.3) == []
        assert a.execute("SELECT 1").fetchone() == (1,)


def test_listener_disconnect_releases_a_clean_server(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=1, pool_timeout=10000))
    with connect(proc) as a:
        a.execute("LISTEN ch_gone")
        a.execute("SELECT 1")
    with connect(proc) as b:
        assert b.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (0,)
        pg.execute("NOTIFY ch_gone, 'stale'")
        assert _notifies(b, timeout=0.3) == []
        assert b.execute("SELECT 'ok'").fetchone() == ("ok",)
        # b can listen itself and gets its notifications
        b.execute("LISTEN ch_gone")
        pg.execute("NOTIFY ch_gone, 'for b'")
        assert _notifies(b) == [("ch_gone", "for b")]
    wait_until(lambda: pg.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND pid <> pg_backend_pid() AND state <> 'idle'") == "0",
        timeout=TIMEOUT, message="servers idle")
