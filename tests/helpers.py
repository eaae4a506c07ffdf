"""Test helpers: Odyssey-format configs, polling, and an ithaca subprocess wrapper.

Importable from tests (conftest puts tests/ on sys.path) and from scripts/bench
(add the repository's tests/ directory to sys.path first).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgcluster import HOST, PgCluster, _conninfo_value, free_port, quote_literal

REPO_ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "IthacaProcess",
    "IthacaStartError",
    "backend_count",
    "free_port",
    "make_config",
    "wait_port",
    "wait_until",
]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or time runs out.

    Exceptions raised by the predicate count as "not yet"; the last one is
    chained to the final AssertionError.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last_val: Any = None
    while True:
        try:
            last_val = predicate()
            if last_val:
                return last_val
            last_exc = None
        except Exception as e:
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message} (last value: {last_val!r})"
            ) from last_exc
        time.sleep(interval)


def backend_count(pg: PgCluster, usename: str | None = None, datname: str | None = None) -> int:
    """Client backends in pg_stat_activity, not counting the querying session."""
    sql = ("SELECT count(*) FROM pg_stat_activity "
           "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
    if usename is not None:
        sql += f" AND usename = {quote_literal(usename)}"
    if datname is not None:
        sql += f" AND datname = {quote_literal(datname)}"
    return int(pg.scalar(sql))


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_config(pg_port: int, listen_port: int, pool: str = "transaction", pool_size: int = 2,
                extra_route: str = "", extra_global: str = "", auth: str = "none",
                password: str | None = None, storage_user: str | None = None,
                storage_password: str | None = None, pool_timeout: int = 4000,
                routes: str = "", console: bool = True, workers: int = 1,
                prepared: bool = True) -> str:
    """Odyssey-format config: one remote storage, a default route, the console.

    extra_route: lines added inside ``database default { user default { ... } }``.
    extra_global: lines added at top level (before listen).
    routes: complete extra ``database ... { }`` blocks, placed before the default one.
    auth: authentication of the default route ("none", "clear_text", "md5", "scram-sha-256").
    """
    route = [
        f"\t\tauthentication {_q(auth)}",
    ]
    if password is not None:
        route.append(f"\t\tpassword {_q(password)}")
    route += [f"\t\tstorage {_q('postgres_server')}"]
    if storage_user is not None:
        route.append(f"\t\tstorage_user {_q(storage_user)}")
    if storage_password is not None:
        route.append(f"\t\tstorage_password {_q(storage_password)}")
    route += [
        f"\t\tpool {_q(pool)}",
        f"\t\tpool_size {pool_size}",
        f"\t\tpool_timeout {pool_timeout}",
        "\t\tpool_discard yes",
        "\t\tpool_rollback yes",
        "\t\tpool_cancel yes",
        f"\t\tpool_reserve_prepared_statement {'yes' if prepared else 'no'}",
    ]
    route += ["\t\t" + ln.strip() for ln in extra_route.splitlines() if ln.strip()]
    parts = [
        f"workers {workers}",
        "log_to_stdout yes",
        'log_format "%p %t %l [%i %s] (%c) %m\\n"',
        extra_global.strip(),
        "listen {",
        f"\thost {_q(HOST)}",
        f"\tport {listen_port}",
        "}",
        'storage "postgres_server" {',
        '\ttype "remote"',
        f"\thost {_q(HOST)}",
        f"\tport {pg_port}",
        "}",
        routes.strip(),
        "database default {",
        "\tuser default {",
        *route,
        "\t}",
        "}",
    ]
    if console:
        parts += [
            'storage "local" {',
            '\ttype "local"',
            "}",
            'database "console" {',
            "\tuser default {",
            '\t\tauthentication "none"',
            '\t\trole "admin"',
            '\t\tpool "session"',
            '\t\tstorage "local"',
            "\t}",
            "}",
        ]
    return "\n".join(p for p in parts if p) + "\n"


def wait_port(host: str, port: int, timeout: float = 10.0,
              alive: Callable[[], bool] | None = None) -> None:
    """Wait until host:port accepts TCP; ``alive()`` False aborts early."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        if alive is not None and not alive():
            raise ConnectionError(f"process died before {host}:{port} accepted connections")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s")
        time.sleep(0.05)


class IthacaStartError(RuntimeError):
    pass


class IthacaProcess:
    """``python -m ithaca CONFIG`` as a subprocess, output to a log file."""

    def __init__(self, config_text: str, workdir: str | os.PathLike, port: int,
                 python: str = sys.executable, env: dict | None = None,
                 start_timeout: float = 10.0, name: str = "ithaca"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.host = HOST
        self.config_path = self.workdir / f"{name}.conf"
        self.log_path = self.workdir / f"{name}.log"
        self.config_path.write_text(config_text)
        run_env = dict(os.environ)
        run_env["PYTHONUNBUFFERED"] = "1"
        pp = run_env.get("PYTHONPATH")
        run_env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
        if env:
            run_env.update(env)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [python, "-m", "ithaca", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(self.workdir), env=run_env, start_new_session=True,
        )
        try:
            wait_port(HOST, port, start_timeout, alive=lambda: self.proc.poll() is None)
        except (ConnectionError, TimeoutError) as e:
            self.terminate()
            raise IthacaStartError(
                f"ithaca did not start listening on {HOST}:{port}: {e} "
                f"(exit code {self.proc.returncode})\n--- config {self.config_path} ---\n"
                f"{config_text}--- log tail ---\n{self.log_tail()}"
            ) from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def dsn(self, dbname: str = "postgres", user: str = "postgres",
            password: str | None = None, **kw: object) -> str:
        parts: dict[str, object] = {
            "host": HOST, "port": self.port, "dbname": dbname, "user": user,
            "sslmode": "disable", "connect_timeout": 10,
        }
        if password is not None:
            parts["password"] = password
        parts.update(kw)
        return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items())

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit; returns its exit code (TimeoutExpired if not)."""
        return self.proc.wait(timeout=timeout)

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 50) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL (whole process group)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # children left in the group (e.g. worker processes)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> IthacaProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def new_listen_port() -> int:
    return free_port()


def login_error(port: int, user: str = "postgres", database: str = "postgres",
                password: str | None = None, timeout: float = 10.0) -> tuple[str, str]:
    """Connect with asyncpg expecting a refusal; return (SQLSTATE, message) of its error."""

    import asyncpg

    async def attempt() -> tuple[str, str]:
        try:
            conn = await asyncpg.connect(host=HOST, port=port, user=user, database=database,
                                         password=password, ssl=False, timeout=timeout)
        except asyncpg.PostgresError as exc:
            return exc.sqlstate, str(exc)
        await conn.close()
        raise AssertionError("the connection was accepted")

    return run_refused_login(attempt())


def run_refused_login(coro: Any) -> Any:
    """asyncio.run for a login the server refuses. asyncpg leaves its transport for the
    garbage collector when a login fails (a client-library habit, not the pooler's): collect
    it here, quietly, instead of in whatever test runs next under warnings-as-errors."""
    import asyncio
    import gc
    import warnings

    try:
        return asyncio.run(coro)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def vanish(conn: Any) -> None:
    """Make a psycopg connection's socket disappear without a Terminate message."""
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# -- extended-protocol tests: libpq-level helpers and server pinning --------------------------
# (used by tests/integration/test_extended_*.py)

def _pq_wait(pgconn: Any, deadline: float, write: bool = False) -> None:
    import select

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise AssertionError("timed out waiting for the server")
    rlist, wlist = ([], [pgconn.socket]) if write else ([pgconn.socket], [])
    select.select(rlist, wlist, [], min(remaining, 0.5))


def pq_flush(pgconn: Any, timeout: float = 10.0) -> None:
    """Send everything libpq has queued (works in nonblocking mode), with a deadline."""
    deadline = time.monotonic() + timeout
    while pgconn.flush() != 0:
        _pq_wait(pgconn, deadline, write=True)
        pgconn.consume_input()


def pq_next(pgconn: Any, timeout: float = 10.0) -> Any:
    """``pgconn.get_result()`` without blocking past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pq_flush(pgconn, timeout)
    pgconn.consume_input()
    while pgconn.is_busy():
        _pq_wait(pgconn, deadline)
        pgconn.consume_input()
    return pgconn.get_result()


def pq_summary(res: Any) -> tuple:
    """(status name, sqlstate or None, rows as tuples of str/None) of a PGresult."""
    from psycopg import pq

    status = pq.ExecStatus(res.status).name
    sqlstate = res.error_field(pq.DiagnosticField.SQLSTATE)
    rows = tuple(
        tuple(None if (v := res.get_value(r, c)) is None else bytes(v).decode()
              for c in range(res.nfields))
        for r in range(res.ntuples)
    )
    return status, sqlstate.decode() if sqlstate else None, rows


def pq_call(pgconn: Any, send: Callable[[], None], timeout: float = 10.0) -> list[tuple]:
    """Outside pipeline mode: ``send()`` one request, return the pq_summary of every result."""
    send()
    out = []
    deadline = time.monotonic() + timeout
    while True:
        res = pq_next(pgconn, max(0.01, deadline - time.monotonic()))
        if res is None:
            return out
        out.append(pq_summary(res))


def pq_pipeline_results(pgconn: Any, syncs: int, timeout: float = 10.0) -> list:
    """In pipeline mode: read results until ``syncs`` PIPELINE_SYNC results arrived.

    Returns pq_summary tuples, ``None`` for the end of one statement's results and
    ``"SYNC"`` for each pipeline sync point.
    """
    from psycopg import pq

    out: list = []
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < syncs:
        res = pq_next(pgconn, max(0.01, deadline - time.monotonic()))
        if res is None:
            out.append(None)
        elif res.status == pq.ExecStatus.PIPELINE_SYNC:
            out.append("SYNC")
            seen += 1
        else:
            out.append(pq_summary(res))
    return out


def pq_put_copy(pgconn: Any, data: bytes, timeout: float = 10.0) -> None:
    """``put_copy_data`` that copes with a full send buffer in nonblocking mode."""
    deadline = time.monotonic() + timeout
    while pgconn.put_copy_data(data) == 0:
        _pq_wait(pgconn, deadline, write=True)
        pgconn.flush()


def pq_end_copy(pgconn: Any, error: bytes | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pgconn.put_copy_end(error) == 0:
        _pq_wait(pgconn, deadline, write=True)
        pgconn.flush()
    pq_flush(pgconn, timeout)


def pq_read_copy(pgconn: Any, timeout: float = 20.0) -> bytes:
    """Read a COPY TO STDOUT stream to its end; the final result is left for pq_next."""
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        n, data = pgconn.get_copy_data(1)
        if n > 0:
            chunks.append(bytes(data))
        elif n == 0:
            _pq_wait(pgconn, deadline)
            pgconn.consume_input()
        else:  # -1: done, -2: error
            return b"".join(chunks)


class ServerPinner:
    """Hold every server of a transaction-pooling route (``size`` of them) in an open
    transaction, so that the next transaction of another client lands on a chosen server:
    ``route_to(pid)`` ends the transaction holding ``pid`` (the only server left free),
    ``hold_all()`` takes it back.  Close with ``close()`` or use as a context manager."""

    def __init__(self, dsn: str, size: int) -> None:
        import psycopg

        self.holders: list[Any] = []
        self.pids: list[int] = []
        self.held: list[bool] = []
        try:
            for _ in range(size):
                conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
                self.holders.append(conn)
                self.pids.append(self._begin(conn))
                self.held.append(True)
        except BaseException:
            self.close()
            raise
        if len(set(self.pids)) != size:
            self.close()
            raise AssertionError(f"holders share servers: {self.pids}")

    @staticmethod
    def _begin(conn: Any) -> int:
        conn.execute("BEGIN")
        return conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    def hold_all(self) -> None:
        """Every holder back in a transaction (each takes whichever server is free)."""
        before = set(self.pids)
        for i, conn in enumerate(self.holders):
            if not self.held[i]:
                self.pids[i] = self._begin(conn)
                self.held[i] = True
        assert set(self.pids) == before, f"the servers changed: {before} -> {self.pids}"

    def route_to(self, pid: int) -> None:
        """Free only server ``pid``: the next transaction of another client lands on it."""
        self.hold_all()
        i = self.pids.index(pid)
        self.holders[i].execute("COMMIT")
        self.held[i] = False

    def other(self, pid: int) -> int:
        return next(p for p in self.pids if p != pid)

    def release_all(self) -> None:
        for i, conn in enumerate(self.holders):
            if self.held[i]:
                conn.execute("COMMIT")
                self.held[i] = False

    def close(self) -> None:
        for conn in self.holders:
            conn.close()

    def __enter__(self) -> ServerPinner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_threads(fn: Callable[[int], Any], count: int, timeout: float = 30.0) -> list:
    """Run ``fn(i)`` for i in range(count) in daemon threads; return the results in order.

    Waits at most ``timeout`` seconds in all; fails on a hung thread or re-raises the first
    exception (the others are listed in its notes).
    """
    import threading

    results: list = [None] * count
    errors: list[tuple[int, BaseException]] = []

    def worker(i: int) -> None:
        try:
            results[i] = fn(i)
        except BaseException as exc:  # re-raised below
            errors.append((i, exc))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [i for i, t in enumerate(threads) if t.is_alive()]
    if errors:
        i, first = errors[0]
        for j, other in errors[1:4]:
            first.add_note(f"thread {j} also failed: {other!r}")
        first.add_note(f"in thread {i}" + (f"; threads still running: {hung}" if hung else ""))
        raise first
    if hung:
        raise AssertionError(f"threads {hung} still running after {timeout}s")
    return results


# -- lifecycle tests: a raw protocol client, CancelRequests, socket and backend checks ---------
# (used by tests/integration/test_lifecycle_*.py)

CANCEL_REQUEST_CODE = 80877102


def error_fields(payload: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse/NoticeResponse body, keyed by their one-letter code."""
    out: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode(errors="replace")
    return out


class RawPgClient:
    """A minimal protocol-3 client on a plain socket (trust login only). Keeps the
    BackendKeyData it was sent as ``pid`` / ``secret`` so tests can forge CancelRequests."""

    def __init__(self, port: int, user: str = "postgres", database: str = "postgres",
                 host: str = HOST, timeout: float = 10.0) -> None:
        import struct

        self._struct = struct
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""
        self.pid: int | None = None
        self.secret: int | None = None
        try:
            body = b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                            for k, v in (("user", user), ("database", database))) + b"\0"
            self.sock.sendall(struct.pack("!ii", len(body) + 8, 196608) + body)
            for tag, payload in self.read_until_ready(timeout):
                if tag == b"K":
                    self.pid, self.secret = struct.unpack("!II", payload[:8])
                elif tag == b"E":
                    raise AssertionError(f"login refused: {error_fields(payload)}")
        except BaseException:
            self.sock.close()
            raise

    def _read_message(self, deadline: float) -> tuple[bytes, bytes]:
        while True:
            if len(self._buf) >= 5:
                length = self._struct.unpack("!i", self._buf[1:5])[0]
                if len(self._buf) >= 1 + length:
                    tag, payload = self._buf[:1], self._buf[5:1 + length]
                    self._buf = self._buf[1 + length:]
                    return tag, payload
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out waiting for a message from the server")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._buf += chunk

    def read_until_ready(self, timeout: float = 10.0) -> list[tuple[bytes, bytes]]:
        """Messages up to and including the next ReadyForQuery."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            tag, payload = self._read_message(deadline)
            out.append((tag, payload))
            if tag == b"Z":
                return out

    def send_query(self, sql: str) -> None:
        body = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + self._struct.pack("!i", len(body) + 4) + body)

    def query(self, sql: str, timeout: float = 10.0) -> tuple[list[tuple[str | None, ...]],
                                                               str | None]:
        """Simple query: (rows as text tuples, SQLSTATE of its error or None)."""
        self.send_query(sql)
        return self.result(timeout)

    def result(self, timeout: float = 10.0) -> tuple[list[tuple[str | None, ...]], str | None]:
        rows: list[tuple[str | None, ...]] = []
        sqlstate = None
        for tag, payload in self.read_until_ready(timeout):
            if tag == b"D":
                n = self._struct.unpack("!h", payload[:2])[0]
                pos, row = 2, []
                for _ in range(n):
                    size = self._struct.unpack("!i", payload[pos:pos + 4])[0]
                    pos += 4
                    if size < 0:
                        row.append(None)
                    else:
                        row.append(payload[pos:pos + size].decode())
                        pos += size
                rows.append(tuple(row))
            elif tag == b"E":
                sqlstate = error_fields(payload).get("C")
        return rows, sqlstate

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"X\0\0\0\4")
        self.sock.close()

    def __enter__(self) -> RawPgClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_cancel_request(port: int, pid: int, secret: int, host: str = HOST,
                        timeout: float = 5.0) -> None:
    """Send one CancelRequest and wait (at most ``timeout``) for the other side to close."""
    import struct

    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack("!IIII", 16, CANCEL_REQUEST_CODE, pid & 0xFFFFFFFF,
                                 secret & 0xFFFFFFFF))
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass


def wait_readable(sock_or_fd: Any, timeout: float) -> bool:
    """True when the socket has data or EOF within ``timeout`` seconds."""
    import select

    fd = sock_or_fd if isinstance(sock_or_fd, int) else sock_or_fd.fileno()
    return bool(select.select([fd], [], [], timeout)[0])


def backend_state(pg: PgCluster, pid: int) -> str:
    """pg_stat_activity.state of backend ``pid``; "" when there is no such backend."""
    return pg.scalar(f"SELECT coalesce(state, '?') FROM pg_stat_activity WHERE pid = {int(pid)}")


def backend_pids(pg: PgCluster, usename: str = "postgres") -> set[int]:
    """Client backend pids of ``usename``, not counting the querying session."""
    out = pg.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                  f"AND pid <> pg_backend_pid() AND usename = {quote_literal(usename)}")
    return {int(x) for x in out.split()}


def running_query_pid(pg: PgCluster, query: str) -> int | None:
    """Pid of the backend actively running exactly ``query``, or None."""
    out = pg.scalar("SELECT pid FROM pg_stat_activity WHERE state = 'active' "
                    f"AND query = {quote_literal(query)} LIMIT 1")
    return int(out) if out else None


def is_ithaca(target: Any) -> bool:
    """True for an IthacaProcess target, False for a PgCluster (the "direct" runs)."""
    return isinstance(target, IthacaProcess)
