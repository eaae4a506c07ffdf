"""Throw-away PostgreSQL clusters for tests, scripts and benchmarks.

Usable from pytest (see tests/conftest.py) and from plain scripts: add the
repository's ``tests/`` directory to ``sys.path`` and ``import pgcluster``.

Design notes:

* ``initdb`` is slow, so it runs once per PostgreSQL version into a template
  directory shared between processes (guarded by a file lock).  Each cluster is
  a copy of that template plus a small per-cluster config file
  (``ithaca_cluster.conf``) holding the port and socket directory.
* PostgreSQL refuses to run as root.  When we are root every server-side
  command runs as the ``postgres`` OS user through ``runuser`` and all
  directories are chowned to it; base directories live under ``/tmp`` with
  mode 0755 so that user can reach them.
* Administrative SQL goes over the unix socket, whose ``local`` hba line stays
  ``trust`` whatever ``set_hba`` is given, so tests can demand md5/scram over
  TCP without locking the harness out.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "PgCluster",
    "PgClusterError",
    "free_port",
    "pg_bindir",
    "quote_ident",
    "quote_literal",
]

HOST = "127.0.0.1"
SUPERUSER = "postgres"
OS_USER = "postgres"
START_ATTEMPTS = 5
CMD_TIMEOUT = 60

BASE_SETTINGS = """
# --- added by tests/pgcluster.py (template) ---
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 32MB
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
log_connections = off
log_disconnections = off
dynamic_shared_memory_type = posix
include_if_exists = 'ithaca_cluster.conf'
"""

DEFAULT_HBA = [
    "local all all trust",
    "host all all 127.0.0.1/32 trust",
]


class PgClusterError(RuntimeError):
    pass


def free_port(host: str = HOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _is_root() -> bool:
    return os.geteuid() == 0


def pg_bindir() -> Path:
    """Directory holding initdb/pg_ctl/postgres (env PG_BINDIR wins)."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env)
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    raise PgClusterError(
        "PostgreSQL server binaries (initdb) not found; install the 'postgresql' "
        "package or set PG_BINDIR"
    )


def _tool(name: str) -> str:
    path = pg_bindir() / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    raise PgClusterError(f"PostgreSQL tool {name!r} not found")


def _as_pg(cmd: Sequence[str]) -> list[str]:
    """Prefix a command so it runs as the postgres OS user when we are root."""
    if _is_root():
        return ["runuser", "-u", OS_USER, "--", *cmd]
    return list(cmd)


def _pg_ids() -> tuple[int, int] | None:
    if not _is_root():
        return None
    try:
        pw = pwd.getpwnam(OS_USER)
    except KeyError as e:
        raise PgClusterError(
            f"running as root but OS user {OS_USER!r} does not exist "
            "(the Debian 'postgresql' package creates it)"
        ) from e
    return pw.pw_uid, pw.pw_gid


def _chown_tree(path: Path) -> None:
    ids = _pg_ids()
    if ids is None:
        return
    uid, gid = ids
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), uid, gid)


def _run(cmd: Sequence[str], *, check: bool = True, timeout: float = CMD_TIMEOUT,
         env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, env=env,
    )
    if check and proc.returncode != 0:
        raise PgClusterError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )
    return proc


def _server_version() -> str:
    out = _run([_tool("postgres"), "--version"]).stdout.strip()
    m = re.search(r"\d+(\.\d+)*", out)
    return m.group(0) if m else "unknown"


def _template_dir() -> Path:
    """Shared initdb template, created once (per PG version, per uid)."""
    version = _server_version()
    root = Path(tempfile.gettempdir()) / f"ithaca-pgtemplate-{os.geteuid()}-{version}"
    data = root / "data"
    marker = root / "READY"
    if marker.exists():
        return data
    root.mkdir(mode=0o755, exist_ok=True)
    os.chmod(root, 0o755)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if marker.exists():
                return data
            if data.exists():
                shutil.rmtree(data)
            building = root / "building"
            if building.exists():
                shutil.rmtree(building)
            building.mkdir(mode=0o700)
            _chown_tree(building)
            _run(_as_pg([
                _tool("initdb"), "-D", str(building), "-U", SUPERUSER, "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync",
            ]), timeout=120)
            with open(building / "postgresql.conf", "a") as f:
                f.write(BASE_SETTINGS)
            (building / "pg_hba.conf").write_text("\n".join(DEFAULT_HBA) + "\n")
            _chown_tree(building)
            os.rename(building, data)
            marker.write_text(version + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return data


def _make_base_dir(base_dir: str | os.PathLike | None) -> Path:
    """A fresh directory that the postgres OS user can reach."""
    parent = Path(base_dir) if base_dir is not None else None
    if parent is not None and _is_root() and not _reachable_by_pg(parent):
        parent = None  # e.g. pytest's 0700 /tmp/pytest-of-root
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="ithaca-pg-", dir=str(parent) if parent else "/tmp"))
    os.chmod(d, 0o755)
    _chown_tree(d)
    return d


def _reachable_by_pg(path: Path) -> bool:
    ids = _pg_ids()
    if ids is None:
        return True
    uid, gid = ids
    p = path.resolve()
    for anc in [p, *p.parents]:
        if not anc.exists():
            continue
        st = anc.stat()
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


_LIVE: weakref.WeakSet[PgCluster] = weakref.WeakSet()


@atexit.register
def _cleanup_live() -> None:
    for c in list(_LIVE):
        with contextlib.suppress(Exception):
            c.cleanup()


class PgCluster:
    """A throw-away PostgreSQL cluster listening on 127.0.0.1:<port>."""

    host = HOST

    def __init__(self, base_dir: str | os.PathLike | None = None, port: int | None = None):
        self.base = _make_base_dir(base_dir)
        self.datadir = self.base / "data"
        self.socket_dir = self.base
        self.logfile = self.base / "postgresql.log"
        self.port = port or free_port()
        self._fixed_port = port is not None
        self._reload_seq = 0
        self._extra_conf: dict[str, str] = {}
        self.running = False
        shutil.copytree(_template_dir(), self.datadir, symlinks=True)
        os.chmod(self.datadir, 0o700)
        self.logfile.touch()
        _chown_tree(self.base)
        self._write_cluster_conf()
        _LIVE.add(self)

    # ------------------------------------------------------------------ config
    def _write_cluster_conf(self) -> None:
        lines = [
            f"port = {self.port}",
            f"unix_socket_directories = '{self.socket_dir}'",
            f"ithaca.reload_seq = {self._reload_seq}",
        ]
        lines += [f"{k} = {v}" for k, v in self._extra_conf.items()]
        path = self.datadir / "ithaca_cluster.conf"
        path.write_text("\n".join(lines) + "\n")
        self._chown_file(path)

    def _chown_file(self, path: Path) -> None:
        ids = _pg_ids()
        if ids is not None:
            os.chown(path, *ids)

    def set_config(self, **settings: object) -> None:
        """Add postgresql.conf settings (values are written verbatim, strings quoted).

        Takes effect on reload() for reloadable settings, else on restart().
        """
        for k, v in settings.items():
            if isinstance(v, bool):
                v = "on" if v else "off"
            elif isinstance(v, str):
                v = quote_literal(v)
            self._extra_conf[k] = str(v)
        self._write_cluster_conf()

    def set_hba(self, lines: Iterable[str], keep_local_trust: bool = True) -> None:
        """Replace pg_hba.conf with ``lines`` and reload (waits until applied).

        With keep_local_trust (default) ``local all all trust`` comes first so the
        harness's own unix-socket admin connection keeps working.
        """
        body = list(lines)
        if keep_local_trust:
            body = ["local all all trust", *body]
        path = self.datadir / "pg_hba.conf"
        path.write_text("\n".join(body) + "\n")
        self._chown_file(path)
        if self.running:
            self.reload()

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP the server and wait until new connections see the new config."""
        self._reload_seq += 1
        self._write_cluster_conf()
        _run(_as_pg([_tool("pg_ctl"), "-D", str(self.datadir), "reload"]))
        deadline = time.monotonic() + timeout
        want = str(self._reload_seq)
        last = ""
        while time.monotonic() < deadline:
            last = self.psql("SHOW ithaca.reload_seq", check=False).strip()
            if last == want:
                errors = self.psql(
                    "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL",
                    check=False,
                ).strip()
                if errors not in ("", "0"):
                    raise PgClusterError(f"pg_hba.conf has {errors} invalid line(s)")
                return
            time.sleep(0.02)
        raise PgClusterError(f"reload not applied within {timeout}s (seq {last!r} != {want})")

    def set_password_encryption(self, method: str) -> None:
        """'md5' or 'scram-sha-256': how passwords set from now on are stored."""
        if method not in ("md5", "scram-sha-256"):
            raise ValueError(method)
        self.set_config(password_encryption=method)
        if self.running:
            self.reload()

    # --------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 30.0) -> PgCluster:
        if self.running:
            return self
        for attempt in range(START_ATTEMPTS):
            proc = _run(_as_pg([
                _tool("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                "-w", "-t", str(int(timeout)), "start",
            ]), check=False, timeout=timeout + 15)
            if proc.returncode == 0:
                self.running = True
                self._wait_ready(timeout)
                return self
            log = self.log_tail(30)
            port_clash = "could not bind" in log or "already in use" in log
            if port_clash and not self._fixed_port and attempt + 1 < START_ATTEMPTS:
                self.port = free_port()
                self._write_cluster_conf()
                continue
            raise PgClusterError(
                f"pg_ctl start failed ({proc.returncode}): {proc.stderr.strip()}\n"
                f"--- {self.logfile} ---\n{log}"
            )
        raise PgClusterError("unreachable")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        err = ""
        while time.monotonic() < deadline:
            proc = self._psql_proc("SELECT 1", "postgres", SUPERUSER, tcp=True)
            if proc.returncode == 0 and proc.stdout.strip() == "1":
                return
            err = proc.stderr.strip()
            time.sleep(0.05)
        raise PgClusterError(f"server not ready within {timeout}s: {err}\n{self.log_tail()}")

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        if not self.datadir.exists():
            self.running = False
            return
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            self.running = False
            return
        proc = _run(_as_pg([
            _tool("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w",
            "-t", str(int(timeout)), "stop",
        ]), check=False, timeout=timeout + 15)
        if proc.returncode != 0 and pidfile.exists():
            self._kill_postmaster(pidfile)
        self.running = False

    def _kill_postmaster(self, pidfile: Path) -> None:
        with contextlib.suppress(Exception):
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        """Stop the server (if running) and remove every file of the cluster."""
        try:
            self.stop("immediate" if self.running else "fast")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            _LIVE.discard(self)

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # --------------------------------------------------------------------- SQL
    def _psql_proc(self, sql: str, db: str, user: str, tcp: bool = False,
                   password: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("PGSERVICE", None)
        env["PGCONNECT_TIMEOUT"] = "10"
        env["PGSSLMODE"] = "disable"
        if password is not None:
            env["PGPASSWORD"] = password
        else:
            env.pop("PGPASSWORD", None)
        host = HOST if tcp else str(self.socket_dir)
        cmd = [
            _tool("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-w",
            "-h", host, "-p", str(self.port), "-U", user, "-d", db, "-c", sql,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT,
                              stdin=subprocess.DEVNULL, env=env)

    def psql(self, sql: str, db: str = "postgres", user: str = SUPERUSER, *,
             tcp: bool = False, password: str | None = None, check: bool = True) -> str:
        """Run SQL with psql -At; returns stdout. Unix socket unless tcp=True."""
        proc = self._psql_proc(sql, db, user, tcp=tcp, password=password)
        if check and proc.returncode != 0:
            raise PgClusterError(f"psql failed ({proc.returncode}) for {sql!r}: "
                                 f"{proc.stderr.strip()}")
        return proc.stdout

    def execute(self, sql: str, db: str = "postgres", user: str = SUPERUSER) -> str:
        return self.psql(sql, db=db, user=user)

    def scalar(self, sql: str, db: str = "postgres", user: str = SUPERUSER) -> str:
        out = self.psql(sql, db=db, user=user).strip().splitlines()
        return out[0] if out else ""

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER,
            password: str | None = None, **kw: object) -> str:
        """libpq conninfo for a TCP connection to this cluster."""
        parts = {
            "host": HOST, "port": self.port, "dbname": dbname, "user": user,
            "sslmode": "disable", "connect_timeout": 10,
        }
        if password is not None:
            parts["password"] = password
        parts.update(kw)
        return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items())

    def create_role(self, name: str, password: str | None = None, superuser: bool = False,
                    login: bool = True, password_encryption: str | None = None) -> None:
        opts = ["LOGIN" if login else "NOLOGIN", "SUPERUSER" if superuser else "NOSUPERUSER"]
        if password is not None:
            opts.append(f"PASSWORD {quote_literal(password)}")
        sql = f"CREATE ROLE {quote_ident(name)} {' '.join(opts)}"
        if password_encryption:
            sql = f"SET password_encryption = {quote_literal(password_encryption)}; {sql}"
        self.psql(sql)

    def create_database(self, name: str, owner: str | None = None) -> None:
        sql = f"CREATE DATABASE {quote_ident(name)}"
        if owner:
            sql += f" OWNER {quote_ident(owner)}"
        self.psql(sql)

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 50) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"PgCluster(port={self.port}, datadir={str(self.datadir)!r})"


def _conninfo_value(v: object) -> str:
    s = str(v)
    if s and all(c not in s for c in " '\\"):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
