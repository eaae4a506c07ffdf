"""Demo for scripts/run.sh: throw-away PostgreSQL + ithaca with examples/ithaca.conf.

Creates a cluster in a temp dir, a role ``app`` (password ``secret``) owning a
database ``app``, copies examples/ithaca.conf next to it with ONLY the storage
port rewritten to the cluster's port (and the listen port, if 6432 is busy),
then runs ithaca in the foreground.  Ctrl-C / SIGTERM stops ithaca and the
cluster and removes the temp dir.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from pgcluster import PgCluster, free_port  # noqa: E402

LISTEN_PORT = 6432


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def rewrite_config(text: str, pg_port: int, listen_port: int) -> str:
    def block_port(name_pattern: str, new_port: int, text: str) -> str:
        pat = re.compile(r"(^" + name_pattern + r"\s*\{[^}]*?^\s*port\s+)\d+", re.M | re.S)
        out, n = pat.subn(lambda m: m.group(1) + str(new_port), text, count=1)
        if n != 1:
            raise SystemExit(f"could not find the port of block {name_pattern!r} in the config")
        return out

    text = block_port(r'storage\s+"postgres_server"', pg_port, text)
    if listen_port != LISTEN_PORT:
        text = block_port(r"listen", listen_port, text)
    return text


class Stop(Exception):
    pass


def main() -> int:
    def on_signal(signum: int, frame: object) -> None:
        raise Stop(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tmp = Path(tempfile.mkdtemp(prefix="ithaca-demo-"))
    cluster: PgCluster | None = None
    proc: subprocess.Popen | None = None
    rc = 0
    try:
        print("starting a throw-away PostgreSQL ...", flush=True)
        cluster = PgCluster()
        cluster.start()
        cluster.create_role("app", password="secret")
        cluster.create_database("app", owner="app")
        cluster.set_hba([
            "host all app 127.0.0.1/32 md5",
            "host all all 127.0.0.1/32 trust",
        ])

        listen = LISTEN_PORT
        note = ""
        if not port_free(LISTEN_PORT):
            listen = free_port()
            note = f" (port {LISTEN_PORT} is busy, so the listen port was rewritten to {listen})"
        conf = tmp / "ithaca.conf"
        conf.write_text(rewrite_config((REPO / "examples/ithaca.conf").read_text(),
                                       cluster.port, listen))

        print(f"PostgreSQL {cluster.port} in {cluster.base}; config {conf}{note}")
        print("connect with:")
        print(f'  psql "host=127.0.0.1 port={listen} dbname=app user=app"   (password: secret)')
        print(f'  psql "host=127.0.0.1 port={listen} dbname=console user=admin"  (admin console)')
        print("press Ctrl-C to stop", flush=True)

        proc = subprocess.Popen([sys.executable, "-m", "ithaca", str(conf)], cwd=str(tmp),
                                stdin=subprocess.DEVNULL)
        rc = proc.wait()
        print(f"ithaca exited with code {rc}", flush=True)
    except (KeyboardInterrupt, Stop):
        print("\nstopping ...", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if cluster is not None:
            cluster.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
        print("cleaned up", flush=True)
    return rc


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
