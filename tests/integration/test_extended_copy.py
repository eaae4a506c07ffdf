"""Issue 4, points 3 and 4: COPY FROM STDIN / TO STDOUT through transaction pooling, in the
simple and the extended protocol, 60k rows with checksums, and errors in the middle of a COPY
(bad row, CopyFail, error while copying out): the client connection stays usable and, with
pool_size 1, the next client gets a clean server.  Also run directly against PostgreSQL
("direct") to check the tests' own logic.
"""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from helpers import (
    pq_end_copy,
    pq_flush,
    pq_next,
    pq_put_copy,
    pq_read_copy,
    pq_summary,
    run_threads,
    wait_until,
)

# a hung pooler fails the test quickly instead of after the suite-wide 120 s
pytestmark = pytest.mark.timeout(30)

TIMEOUT = 20.0
NROWS = 60_000


def _rows(n: int = NROWS, bad_at: int | None = None, salt: str = "") -> bytes:
    lines = []
    for i in range(1, n + 1):
        a = "not-a-number" if i == bad_at else str(i)
        lines.append(f"{a}\t{salt}{hashlib.md5(str(i).encode()).hexdigest()}\n")
    return "".join(lines).encode()


def _chunks(data: bytes, size: int = 64 * 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _server_checksum(pg, table: str = "t") -> tuple[str, str]:
    count = pg.scalar(f"SELECT count(*) FROM {table}")
    digest = pg.scalar(
        f"SELECT coalesce(md5(string_agg(a || E'\\t' || b || E'\\n', '' ORDER BY a)), '') "
        f"FROM {table}")
    return count, digest


def _clean(pg) -> bool:
    """No backend (but ours) in a transaction or running a statement."""
    return pg.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND pid <> pg_backend_pid() AND (state LIKE 'idle in transaction%' "
        "OR state = 'active')") == "0"


def _second_client_works(target, pg) -> None:
    wait_until(lambda: _clean(pg), timeout=TIMEOUT, message="no COPY or transaction left")
    with psycopg.connect(target.dsn(), autocommit=True) as b:
        assert b.execute("SELECT count(*), %s::text FROM t", ("b",)).fetchone()[1] == "b"
        assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert b.execute("SELECT now() = statement_timestamp()").fetchone() == (True,)
    wait_until(lambda: _clean(pg), timeout=TIMEOUT, message="no COPY or transaction left")


@pytest.fixture
def table(pg):
    pg.execute("CREATE TABLE t (a int PRIMARY KEY, b text NOT NULL)")
    return "t"


# ------------------------------------------------------------------------- round trips
def test_copy_simple_protocol_round_trip(target, pg, table):
    data = _rows()
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        cur = conn.cursor()
        with cur.copy("COPY t FROM STDIN") as copy:
            for chunk in _chunks(data):
                copy.write(chunk)
        assert cur.rowcount == NROWS
        assert _server_checksum(pg) == (str(NROWS), hashlib.md5(data).hexdigest())
        with cur.copy("COPY (SELECT a, b FROM t ORDER BY a) TO STDOUT") as copy:
            out = b"".join(bytes(block) for block in copy)
        assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (NROWS,)


def test_copy_extended_protocol_round_trip(target, pg, table):
    data = _rows()
    with psycopg.connect(target.dsn(), autocommit=True) as conn:
        pgc = conn.pgconn
        pgc.send_query_params(b"COPY t FROM STDIN", None)
        pq_flush(pgc)
        assert pq_summary(pq_next(pgc, TIMEOUT))[0] == "COPY_IN"
        for chunk in _chunks(data):
            pq_put_copy(pgc, chunk, TIMEOUT)
        pq_end_copy(pgc, None, TIMEOUT)
        res = pq_next(pgc, TIMEOUT)
        assert pq_summary(res)[:2] == ("COMMAND_OK", None)
        assert res.command_tuples == NROWS
        assert pq_next(pgc, TIMEOUT) is None
        assert _server_checksum(pg) == (str(NROWS), hashlib.md5(data).hexdigest())

        pgc.send_query_params(b"COPY (SELECT a, b FROM t ORDER BY a) TO STDOUT", None)
        pq_flush(pgc)
        assert pq_summary(pq_next(pgc, TIMEOUT))[0] == "COPY_OUT"
        out = pq_read_copy(pgc, TIMEOUT)
        res = pq_next(pgc, TIMEOUT)
        assert pq_summary(res)[:2] == ("COMMAND_OK", None)
        assert res.command_tuples == NROWS
        assert pq_next(pgc, TIMEOUT) is None
        assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()
        assert conn.execute("SELECT %s::int", (5,)).fetchone() == (5,)


def test_concurrent_copies_through_two_servers(target, pg):
    """Four clients COPY 60k rows in and out at once, simple and extended protocol."""
    for n in range(4):
        pg.execute(f"CREATE TABLE t{n} (a int PRIMARY KEY, b text NOT NULL)")

    def client(n: int) -> bytes:
        data = _rows(salt=f"c{n}-")
        with psycopg.connect(target.dsn(), autocommit=True) as conn:
            if n % 2 == 0:
                cur = conn.cursor()
                with cur.copy(f"COPY t{n} FROM STDIN") as copy:
                    for chunk in _chunks(data):
                        copy.write(chunk)
                with cur.copy(f"COPY (SELECT a, b FROM t{n} ORDER BY a) TO STDOUT") as copy:
                    output = b"".join(bytes(block) for block in copy)
            else:
                pgc = conn.pgconn
                pgc.send_query_params(f"COPY t{n} FROM STDIN".encode(), None)
                assert pq_summary(pq_next(pgc, TIMEOUT))[0] == "COPY_IN"
                for chunk in _chunks(data):
                    pq_put_copy(pgc, chunk, TIMEOUT)
                pq_end_copy(pgc, None, TIMEOUT)
                assert pq_summary(pq_next(pgc, TIMEOUT))[0] == "COMMAND_OK"
                assert pq_next(pgc, TIMEOUT) is None
                pgc.send_query_params(
                    f"COPY (SELECT a, b FROM t{n} ORDER BY a) TO STDOUT".encode(), None)
                assert pq_summary(pq_next(pgc, TIMEOUT))[0] == "COPY_OUT"
                output = pq_read_copy(pgc, TIMEOUT)
                assert pq_summary(pq_next(pgc, TIMEOUT))[0] == "COMMAND_OK"
                assert pq_next(pgc, TIMEOUT) is None
            assert conn.execute("SELECT %s::int", (n,)).fetchone() == (n,)
        return output

    outputs = run_threads(client, 4, timeout=25)
    for n in range(4):
        data = _rows(salt=f"c{n}-")
        assert outputs[n] == data, f"client {n}: COPY TO STDOUT returned other data"
        assert _server_checksum(pg, f"t{n}") == (str(NROWS), hashlib.md5(data).hexdigest())


# ------------------------------------------------------------------------ errors in COPY
@pytest.mark.parametrize("bad_at", [100, NROWS - 1])
def test_copy_in_bad_row_simple_protocol(target1, pg, table, bad_at):
    """The server fails on a bad row (early: while the client is still streaming; late:
    near the end); the error reaches the client after CopyDone, nothing is left behind."""
    data = _rows(bad_at=bad_at)
    with psycopg.connect(target1.dsn(), autocommit=True) as conn:
        cur = conn.cursor()
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with cur.copy("COPY t FROM STDIN") as copy:
                for chunk in _chunks(data):
                    copy.write(chunk)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
        # the same connection can COPY again
        good = _rows(n=1000)
        with cur.copy("COPY t FROM STDIN") as copy:
            copy.write(good)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1000,)
    _second_client_works(target1, pg)


@pytest.mark.parametrize("bad_at", [100, NROWS - 1])
def test_copy_in_bad_row_extended_protocol(target1, pg, table, bad_at):
    data = _rows(bad_at=bad_at)
    with psycopg.connect(target1.dsn(), autocommit=True) as conn:
        pgc = conn.pgconn
        pgc.send_query_params(b"COPY t FROM STDIN", None)
        pq_flush(pgc)
        assert pq_summary(pq_next(pgc, TIMEOUT))[0] == "COPY_IN"
        for chunk in _chunks(data):
            pq_put_copy(pgc, chunk, TIMEOUT)
        pq_end_copy(pgc, None, TIMEOUT)
        assert pq_summary(pq_next(pgc, TIMEOUT))[:2] == ("FATAL_ERROR", "22P02")
        assert pq_next(pgc, TIMEOUT) is None
        assert pgc.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
        assert conn.execute("SELECT %s::text", ("after",)).fetchone() == ("after",)
    _second_client_works(target1, pg)


def test_copy_fail_from_client_simple_protocol(target1, pg, table):
    """An exception inside psycopg's copy block sends CopyFail."""

    class Abort(Exception):
        pass

    with psycopg.connect(target1.dsn(), autocommit=True) as conn:
        cur = conn.cursor()
        with pytest.raises(Abort):
            with cur.copy("COPY t FROM STDIN") as copy:
                copy.write(_rows(n=5000))
                raise Abort()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    _second_client_works(target1, pg)


def test_copy_fail_from_client_extended_protocol(target1, pg, table):
    with psycopg.connect(target1.dsn(), autocommit=True) as conn:
        pgc = conn.pgconn
        pgc.send_query_params(b"COPY t FROM STDIN", None)
        pq_flush(pgc)
        assert pq_summary(pq_next(pgc, TIMEOUT))[0] == "COPY_IN"
        pq_put_copy(pgc, _rows(n=5000), TIMEOUT)
        pq_end_copy(pgc, b"client gave up", TIMEOUT)
        status, sqlstate, _ = pq_summary(pq_next(pgc, TIMEOUT))
        assert (status, sqlstate) == ("FATAL_ERROR", "57014")
        assert pq_next(pgc, TIMEOUT) is None
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    _second_client_works(target1, pg)


def test_copy_in_error_inside_transaction(target1, pg, table):
    """A failed COPY inside BEGIN leaves the transaction failed (and the server attached)
    until ROLLBACK."""
    with psycopg.connect(target1.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        cur = conn.cursor()
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with cur.copy("COPY t FROM STDIN") as copy:
                copy.write(_rows(bad_at=10))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        # the failed transaction is still open on its server
        assert pg.scalar(f"SELECT state FROM pg_stat_activity WHERE pid = {pid}") == \
            "idle in transaction (aborted)"
        conn.execute("ROLLBACK")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    _second_client_works(target1, pg)


def test_copy_out_error_midway_simple_protocol(target1, pg, table):
    """The server fails after sending thousands of CopyData rows."""
    with psycopg.connect(target1.dsn(), autocommit=True) as conn:
        cur = conn.cursor()
        got = 0
        with pytest.raises(psycopg.errors.DivisionByZero):
            with cur.copy("COPY (SELECT g, 1 / (30000 - g), repeat('x', 50) "
                          "FROM generate_series(1, 60000) g) TO STDOUT") as copy:
                for block in copy:
                    got += len(block)
        assert got > 0
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)
    _second_client_works(target1, pg)


def test_copy_out_error_midway_extended_protocol(target1, pg, table):
    with psycopg.connect(target1.dsn(), autocommit=True) as conn:
        pgc = conn.pgconn
        pgc.send_query_params(b"COPY (SELECT g, 1 / (30000 - g), repeat('x', 50) "
                              b"FROM generate_series(1, 60000) g) TO STDOUT", None)
        pq_flush(pgc)
        assert pq_summary(pq_next(pgc, TIMEOUT))[0] == "COPY_OUT"
        out = pq_read_copy(pgc, TIMEOUT)
        assert out.startswith(b"1\t0\t")
        assert pq_summary(pq_next(pgc, TIMEOUT))[:2] == ("FATAL_ERROR", "22012")
        assert pq_next(pgc, TIMEOUT) is None
        assert conn.execute("SELECT %s::int", (1,)).fetchone() == (1,)
    _second_client_works(target1, pg)
