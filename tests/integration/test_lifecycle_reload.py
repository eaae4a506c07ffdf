"""Reload on SIGHUP (issue 3, point 4): an invalid file is reported at file:line and the old
config keeps working; a valid one applies to new clients (authentication, pool_size), removed
rules are drained while their clients keep working, and the log summarises what changed."""

from __future__ import annotations

import signal

import psycopg
import pytest
from helpers import backend_count, login_error, make_config, wait_until

pytestmark = pytest.mark.timeout(30)

DB2_RULE = """database "db2" {
\tuser default {
\t\tauthentication "none"
\t\tstorage "postgres_server"
\t\tpool "transaction"
\t\tpool_size 2
\t\tpool_timeout 4000
\t}
}"""


def _reload(proc, text: str) -> int:
    """Rewrite the config and SIGHUP; returns the log length before, to search after it."""
    before = len(proc.log_text())
    proc.config_path.write_text(text)
    proc.send_signal(signal.SIGHUP)
    return before


def _log_after(proc, offset: int) -> str:
    return proc.log_text()[offset:]


def test_invalid_config_is_reported_and_the_old_one_kept(pg, ithaca):
    old = make_config(pg.port, ithaca.port, pool="transaction", pool_size=2)
    proc = ithaca(old)
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        lines = make_config(pg.port, proc.port, pool="transaction", pool_size=2,
                            auth="block").splitlines()
        at = next(i for i, ln in enumerate(lines) if "pool_size" in ln) + 1
        lines.insert(at, "\t\tno_such_option 1")
        offset = _reload(proc, "\n".join(lines) + "\n")
        where = f"{proc.config_path}:{at + 1}"
        wait_until(lambda: where in _log_after(proc, offset), timeout=5,
                   message=f"the reload error at {where} in the log")
        assert "no_such_option" in _log_after(proc, offset)
        assert proc.poll() is None
        # the old config (authentication "none") still serves old and new clients
        assert conn.execute("SELECT 2").fetchone() == (2,)
        with psycopg.connect(proc.dsn(), autocommit=True) as fresh:
            assert fresh.execute("SELECT 3").fetchone() == (3,)


def test_authentication_none_to_block(pg, ithaca):
    proc = ithaca(make_config(pg.port, ithaca.port, pool="transaction", pool_size=2))
    with psycopg.connect(proc.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.commit()
        offset = _reload(proc, make_config(pg.port, proc.port, pool="transaction", pool_size=2,
                                           auth="block"))
        wait_until(lambda: login_error(proc.port)[0] == "28000", timeout=5,
                   message="new logins to be refused with 28000")
        # the connected client keeps working, transaction after transaction
        for i in range(3):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
            conn.commit()
        assert "authentication" in _log_after(proc, offset)


def test_pool_size_grows_for_new_attachments(pg, ithaca):
    proc = ithaca(make_config(pg.port, ithaca.port, pool="transaction", pool_size=1,
                              pool_timeout=500))
    conns = [psycopg.connect(proc.dsn()) for _ in range(3)]
    try:
        first = conns[0].execute("SELECT pg_backend_pid()").fetchone()[0]
        # pool_size 1: a second transaction cannot get a server meanwhile
        with pytest.raises(psycopg.OperationalError) as info:
            conns[1].execute("SELECT pg_backend_pid()")
        assert info.value.sqlstate == "53300"
        conns[1].close()  # a pool_timeout error may end the session: start a new one
        conns[1] = psycopg.connect(proc.dsn())
        offset = _reload(proc, make_config(pg.port, proc.port, pool="transaction", pool_size=3,
                                           pool_timeout=500))
        wait_until(lambda: "pool_size" in _log_after(proc, offset), timeout=5,
                   message="the reload summary naming pool_size")
        pids = [first] + [c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns[1:]]
        assert len(set(pids)) == 3, pids
        assert backend_count(pg, usename="postgres") == 3
        for c in conns:
            c.commit()
    finally:
        for c in conns:
            c.close()


def test_removed_rule_is_drained(pg, ithaca):
    pg.create_database("db2")
    proc = ithaca(make_config(pg.port, ithaca.port, pool="transaction", routes=DB2_RULE))
    with psycopg.connect(proc.dsn(dbname="db2")) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("db2",)
        conn.commit()
        # the db2 rule is gone; the default rule now blocks everyone
        offset = _reload(proc, make_config(pg.port, proc.port, pool="transaction",
                                           auth="block"))
        wait_until(lambda: login_error(proc.port, database="db2")[0] == "28000", timeout=5,
                   message="new db2 logins to fall to the (blocking) default rule")
        for i in range(3):
            assert conn.execute("SELECT current_database(), %s::int", (i,)).fetchone() \
                == ("db2", i)
            conn.commit()
        assert proc.log_text()[offset:], "the reload left no trace in the log"
    # once its last client is gone the removed route's servers are closed
    wait_until(lambda: backend_count(pg, datname="db2") == 0, timeout=5,
               message="the removed route's servers to be closed")
