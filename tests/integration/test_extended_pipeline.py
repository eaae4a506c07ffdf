"""Issue 4, points 1 and 3: outstanding-request tracking and errors inside a pipeline.

In transaction pooling the server goes back to the pool only at ReadyForQuery 'I' once every
Sync (and simple Query) the client sent has been answered; Flush without Sync keeps it; after
an ErrorResponse PostgreSQL skips to the next Sync and every response must still reach the
right client in order.  Each test also runs directly against PostgreSQL ("direct") to check
its own logic.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading

import psycopg
import pytest
from helpers import (
    is_ithaca,
    pq_flush,
    pq_next,
    pq_pipeline_results,
    pq_summary,
    run_threads,
    wait_until,
)

# a hung pooler fails the test quickly instead of after the suite-wide 120 s
pytestmark = pytest.mark.timeout(30)

TIMEOUT = 10.0


class Worker(threading.Thread):
    """Runs ``fn`` in a thread; ``result()`` joins with a timeout and re-raises errors."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.value = None
        self.error: BaseException | None = None
        self.started_work = threading.Event()

    def run(self):
        try:
            self.value = self.fn(self.started_work)
        except BaseException as exc:  # re-raised in result()
            self.error = exc

    def result(self, timeout: float = TIMEOUT):
        self.join(timeout)
        assert not self.is_alive(), f"worker still running after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.value


def _other_client(conn, tag: str, n: int):
    """Queries on ``conn`` (already connected) from a thread, each echoing a distinct value."""

    def run(started: threading.Event):
        out = []
        started.set()
        for i in range(n):
            out.append(conn.execute("SELECT %s::text, pg_backend_pid()",
                                    (f"{tag}{i}",)).fetchone())
        return out

    return run


def _no_open_transactions(pg) -> bool:
    return pg.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND pid <> pg_backend_pid() AND (state LIKE 'idle in transaction%' "
        "OR (state = 'active' AND query NOT LIKE '%pg_stat_activity%'))") == "0"


def test_pipelined_syncs_keep_the_server(target1, pg):
    """Syncs sent before the first ReadyForQuery arrives keep the server attached; a client
    waiting for the only server never sees the pipelining client's results."""
    with psycopg.connect(target1.dsn(), autocommit=True) as a, \
            psycopg.connect(target1.dsn(), autocommit=True, prepare_threshold=None) as b:
        a.execute("SELECT 1")
        pgc = a.pgconn
        pgc.enter_pipeline_mode()
        # first batch is slow, so everything below is sent before its ReadyForQuery
        pgc.send_query_params(b"SELECT $1::text, pg_backend_pid(), pg_sleep(0.4)::text",
                              [b"A0"])
        pgc.pipeline_sync()
        pq_flush(pgc)
        other = Worker(_other_client(b, "B", 10))
        other.start()
        assert other.started_work.wait(TIMEOUT)
        for i in range(1, 6):
            pgc.send_query_params(b"SELECT $1::text, pg_backend_pid(), ''", [f"A{i}".encode()])
            pgc.pipeline_sync()
            pq_flush(pgc)
        results = pq_pipeline_results(pgc, syncs=6, timeout=TIMEOUT)
        rows = [r for r in results if isinstance(r, tuple)]
        assert [r[0] for r in rows] == ["TUPLES_OK"] * 6
        assert [r[2][0][0] for r in rows] == [f"A{i}" for i in range(6)]
        assert len({r[2][0][1] for r in rows}) == 1, "the pipeline changed servers"
        assert results.count("SYNC") == 6
        pgc.exit_pipeline_mode()
        assert a.execute("SELECT 'A-after'").fetchone() == ("A-after",)
        b_rows = other.result()
        assert [r[0] for r in b_rows] == [f"B{i}" for i in range(10)]


class RawClient:
    """A bare protocol-3 client (trust auth) for what libpq will not send, e.g. several
    simple Query messages in one write."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""
        params = b"user\0postgres\0database\0postgres\0\0"
        self.sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        msgs = self.read_until_ready(1)
        assert not [m for m in msgs if m[0] == b"E"], msgs

    @staticmethod
    def query(sql: str) -> bytes:
        body = sql.encode() + b"\0"
        return b"Q" + struct.pack("!i", 4 + len(body)) + body

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until_ready(self, count: int) -> list[tuple[bytes, bytes]]:
        """Messages up to and including the ``count``-th ReadyForQuery."""
        msgs = []
        while count:
            kind = self._read(1)
            (length,) = struct.unpack("!i", self._read(4))
            msgs.append((kind, self._read(length - 4)))
            if kind == b"Z":
                count -= 1
        return msgs

    @staticmethod
    def data_rows(msgs) -> list[tuple]:
        rows = []
        for kind, body in msgs:
            if kind != b"D":
                continue
            (n,), pos, row = struct.unpack("!h", body[:2]), 2, []
            for _ in range(n):
                (ln,) = struct.unpack("!i", body[pos:pos + 4])
                pos += 4
                row.append(None if ln < 0 else body[pos:pos + ln].decode())
                pos += max(ln, 0)
            rows.append(tuple(row))
        return rows

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"X\0\0\0\4")
        self.sock.close()


def test_pipelined_simple_queries_keep_the_server(target1, pg):
    """Several simple Query messages in one write: each is answered by its own
    ReadyForQuery, the server stays attached until the last one, and a client waiting for
    the only server gets only its own rows."""
    raw = RawClient(target1.port)
    try:
        with psycopg.connect(target1.dsn(), autocommit=True, prepare_threshold=None) as b:
            raw.sock.sendall(RawClient.query("SELECT 'A1', pg_backend_pid(), pg_sleep(0.4)"))
            other = Worker(_other_client(b, "B", 10))
            other.start()
            assert other.started_work.wait(TIMEOUT)
            raw.sock.sendall(
                RawClient.query("SELECT 'A2', pg_backend_pid(), ''")
                + RawClient.query("SELECT 'A3', pg_backend_pid(), ''; SELECT 'A4', 0, ''")
                + RawClient.query("SELECT 1/0")
                + RawClient.query("SELECT 'A5', pg_backend_pid(), ''"))
            msgs = raw.read_until_ready(5)
            rows = RawClient.data_rows(msgs)
            assert [r[0] for r in rows] == ["A1", "A2", "A3", "A4", "A5"]
            assert len({r[1] for r in rows if r[0] != "A4"}) == 1, "the queries changed servers"
            errors = [body for kind, body in msgs if kind == b"E"]
            assert len(errors) == 1 and b"C22012\0" in errors[0]
            b_rows = other.result()
            assert [r[0] for r in b_rows] == [f"B{i}" for i in range(10)]
            raw.sock.sendall(RawClient.query("SELECT 'again', 0, ''"))
            assert RawClient.data_rows(raw.read_until_ready(1)) == [("again", "0", "")]
    finally:
        raw.close()


def test_flush_without_sync_keeps_the_server(target1, pg):
    """Execute + Flush (no Sync) returns the rows but leaves the server attached: a second
    client sharing the only server waits until the Sync, and the statements after the
    Flush run in the same transaction on the same backend."""
    with psycopg.connect(target1.dsn(), autocommit=True) as a, \
            psycopg.connect(target1.dsn(), autocommit=True, prepare_threshold=None) as b:
        a.execute("SELECT 1")
        pgc = a.pgconn
        pgc.enter_pipeline_mode()
        pgc.send_query_params(b"SELECT pg_backend_pid(), now()::text, $1::text", [b"first"])
        pgc.send_flush_request()
        pq_flush(pgc)
        status, _, rows = pq_summary(pq_next(pgc, TIMEOUT))
        assert status == "TUPLES_OK"
        pid, started, tag = rows[0]
        assert tag == "first"
        assert pq_next(pgc, TIMEOUT) is None

        other = Worker(_other_client(b, "B", 1))
        other.start()
        assert other.started_work.wait(TIMEOUT)
        if is_ithaca(target1):
            other.join(0.5)  # bounded: the server is still A's, so B must still be waiting
            assert other.is_alive(), "a second client got the server between Flush and Sync"

        pgc.send_query_params(b"SELECT pg_backend_pid(), now()::text, $1::text", [b"second"])
        pgc.pipeline_sync()
        results = pq_pipeline_results(pgc, syncs=1, timeout=TIMEOUT)
        assert results[0][0] == "TUPLES_OK"
        assert results[0][2][0] == (pid, started, "second"), "not the same transaction"
        assert results[1:] == [None, "SYNC"]
        pgc.exit_pipeline_mode()
        b_rows = other.result()
        assert b_rows[0][0] == "B0"
        if is_ithaca(target1):
            assert str(b_rows[0][1]) == pid
        assert a.execute("SELECT 'A-after'").fetchone() == ("A-after",)


@pytest.mark.parametrize("prepare", [False, True])
def test_server_released_after_psycopg_pipeline(target1, prepare):
    """psycopg ends a pipeline with Sync followed by Flush; once the ReadyForQuery 'I' for
    that Sync arrives nothing is outstanding, so an idle pipelining client does not keep
    the only server from a second client."""
    with connect_pair(target1, prepare) as (a, b):
        for i in range(3):
            with a.pipeline():
                c1 = a.execute("SELECT %s::int + 1, pg_backend_pid()", (i,), prepare=prepare)
                c2 = a.execute("SELECT %s::text || '!'", (f"a{i}",), prepare=prepare)
            assert c1.fetchone()[0] == i + 1
            assert c2.fetchone() == (f"a{i}!",)
            # a stays idle (connected, outside any transaction): b must get a server
            assert b.execute("SELECT %s::text", (f"b{i}",)).fetchone() == (f"b{i}",)


class connect_pair:
    """Two autocommit connections to ``target``; the first with prepare_threshold 0 (named
    statements) when ``prepare`` else None (unnamed only)."""

    def __init__(self, target, prepare: bool):
        self.target, self.prepare = target, prepare
        self.conns: list = []

    def __enter__(self):
        self.conns.append(psycopg.connect(self.target.dsn(), autocommit=True,
                                          prepare_threshold=0 if self.prepare else None))
        self.conns.append(psycopg.connect(self.target.dsn(), autocommit=True,
                                          prepare_threshold=None))
        return tuple(self.conns)

    def __exit__(self, *exc):
        for c in self.conns:
            c.close()


def test_psycopg_pipelines_from_many_clients(target):
    """Eight clients pipeline 40 statements each with random sync points through two
    servers: every client gets exactly its own values, in order, and each sync group ran
    on one backend."""
    def client(n: int) -> list:
        rnd = random.Random(1000 + n)
        # unnamed statements only: named ones are test_extended_pstmt.py's subject
        with psycopg.connect(target.dsn(), autocommit=True, prepare_threshold=None) as conn:
            groups: list[list] = [[]]
            with conn.pipeline() as p:
                for k in range(40):
                    cur = conn.execute("SELECT %s::text, pg_backend_pid(), %s::int * 2",
                                       (f"c{n}-{k}", k))
                    groups[-1].append(cur)
                    if rnd.random() < 0.3:
                        p.sync()
                        groups.append([])
            return [[c.fetchone() for c in g] for g in groups if g]

    outcomes = run_threads(client, 8, timeout=25)
    for n in range(8):
        flat = [row for g in outcomes[n] for row in g]
        assert [(r[0], r[2]) for r in flat] == [(f"c{n}-{k}", 2 * k) for k in range(40)]
        for g in outcomes[n]:
            assert len({r[1] for r in g}) == 1, f"client {n}: one sync group, several backends"


def test_error_in_low_level_pipeline_skips_to_next_sync(target1, pg):
    """Three sync groups, the second fails: ok / error + aborted / ok after its Sync, in
    order; then the same connection and another client sharing the server work."""
    with psycopg.connect(target1.dsn(), autocommit=True) as a:
        pgc = a.pgconn
        pgc.enter_pipeline_mode()
        pgc.send_query_params(b"SELECT $1::text", [b"one"])
        pgc.pipeline_sync()
        pgc.send_query_params(b"SELECT 1 / $1::int", [b"0"])
        pgc.send_query_params(b"SELECT $1::text", [b"skipped"])
        pgc.send_prepare(b"", b"SELECT $1::int + 1")
        pgc.pipeline_sync()
        pgc.send_query_params(b"SELECT $1::text, pg_backend_pid()", [b"three"])
        pgc.pipeline_sync()
        pq_flush(pgc)
        results = pq_pipeline_results(pgc, syncs=3, timeout=TIMEOUT)
        pgc.exit_pipeline_mode()

        assert results[0] == ("TUPLES_OK", None, (("one",),))
        assert results[1:3] == [None, "SYNC"]
        assert results[3][:2] == ("FATAL_ERROR", "22012")
        assert results[4:9] == [None, ("PIPELINE_ABORTED", None, ()), None,
                                ("PIPELINE_ABORTED", None, ()), None]
        assert results[9] == "SYNC"
        assert results[10][0] == "TUPLES_OK" and results[10][2][0][0] == "three"
        assert results[11:] == [None, "SYNC"]

        assert a.execute("SELECT %s::text", ("same connection",)).fetchone() == (
            "same connection",)
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with psycopg.connect(target1.dsn(), autocommit=True) as b:
            assert b.execute("SELECT 'second client'").fetchone() == ("second client",)
            assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    wait_until(lambda: _no_open_transactions(pg), timeout=TIMEOUT,
               message="no backend left in a transaction")


def test_error_in_psycopg_pipeline(target1, pg):
    """psycopg pipeline, three syncs, the second fails: first ok, second raises, third ok
    after its sync; connection and a second client work afterwards."""
    with psycopg.connect(target1.dsn(), autocommit=True) as a:
        with a.pipeline() as p:
            c1 = a.execute("SELECT %s::int, pg_backend_pid()", (1,))
            p.sync()
            # psycopg raises the error at whichever call first reads it: the next execute
            # or the sync
            stage: list[str] = []
            with pytest.raises(psycopg.errors.DivisionByZero):
                a.execute("SELECT 1 / %s::int", (0,))
                stage.append("failing sent")
                a.execute("SELECT %s::int", (5,))
                stage.append("skipped sent")
                p.sync()
                stage.append("synced")
            if stage != ["failing sent", "skipped sent"]:
                # raised before our Sync went out: send it now; a skipped statement already
                # queued is reported as PipelineAborted when the Sync is processed
                with contextlib.suppress(psycopg.errors.PipelineAborted):
                    p.sync()
            c3 = a.execute("SELECT %s::int, pg_backend_pid()", (3,))
        assert c1.fetchone()[0] == 1
        assert c3.fetchone()[0] == 3
        assert a.execute("SELECT 'after'").fetchone() == ("after",)
        with psycopg.connect(target1.dsn(), autocommit=True) as b:
            assert b.execute("SELECT %s::text", ("b",)).fetchone() == ("b",)
    wait_until(lambda: _no_open_transactions(pg), timeout=TIMEOUT,
               message="no backend left in a transaction")


def test_error_inside_explicit_transaction_pipeline(target1, pg):
    """BEGIN in a pipeline, an error, then ROLLBACK in a later sync group: the failed
    transaction status ('E') keeps the server; after ROLLBACK both clients work."""
    with psycopg.connect(target1.dsn(), autocommit=True) as a:
        pgc = a.pgconn
        pgc.enter_pipeline_mode()
        pgc.send_query_params(b"BEGIN", None)
        pgc.send_query_params(b"SELECT pg_backend_pid()", None)
        pgc.pipeline_sync()
        pgc.send_query_params(b"SELECT 1 / 0", None)
        pgc.pipeline_sync()
        pq_flush(pgc)
        results = pq_pipeline_results(pgc, syncs=2, timeout=TIMEOUT)
        assert results[0][0] == "COMMAND_OK"
        pid = results[2][2][0][0]
        assert results[5][:2] == ("FATAL_ERROR", "22012")
        assert pgc.transaction_status == psycopg.pq.TransactionStatus.INERROR

        pgc.send_query_params(b"SELECT 1", None)  # still in the failed transaction
        pgc.pipeline_sync()
        pgc.send_query_params(b"ROLLBACK", None)
        pgc.send_query_params(b"SELECT pg_backend_pid()", None)
        pgc.pipeline_sync()
        pq_flush(pgc)
        results = pq_pipeline_results(pgc, syncs=2, timeout=TIMEOUT)
        assert results[0][:2] == ("FATAL_ERROR", "25P02")
        assert results[3][0] == "COMMAND_OK"  # ROLLBACK
        assert results[5][2][0][0] == pid, "the failed transaction moved to another server"
        pgc.exit_pipeline_mode()
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with psycopg.connect(target1.dsn(), autocommit=True) as b:
            assert b.execute("SELECT 2").fetchone() == (2,)
    wait_until(lambda: _no_open_transactions(pg), timeout=TIMEOUT,
               message="no backend left in a transaction")
