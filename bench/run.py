"""pgbench: PostgreSQL direct vs PgBouncer vs ithaca, on loopback.

See bench/README.md.  Usage: ``python bench/run.py [--rounds 3] [--duration 5]
[--clients 1,10,50] [--modes simple,extended] [--targets direct,pgbouncer,ithaca]
[--scale 10] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import IthacaProcess, IthacaStartError, make_config, wait_port  # noqa: E402
from pgcluster import PgCluster, free_port  # noqa: E402

ALL_TARGETS = ("direct", "pgbouncer", "ithaca")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TPS_RE = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.M)
NTX_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------- CPU accounting
def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


def _cpu_ticks(pid: int) -> int:
    """utime+stime (+ reaped children's) of one process, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # rest[0] is field 3 (state); utime=14, stime=15, cutime=16, cstime=17
    return sum(int(rest[i]) for i in (11, 12, 13, 14))


def tree_cpu_seconds(root: int) -> float:
    """CPU time of ``root`` and all its live descendants (bounded walk)."""
    seen: set[int] = set()
    todo = [root]
    total = 0
    while todo and len(seen) < 10_000:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _cpu_ticks(pid)
        todo += _children(pid)
    return total / CLK_TCK


# ---------------------------------------------------------------------- targets
@dataclass
class Target:
    name: str
    port: int
    pid: int | None = None  # pooler process whose CPU is measured


def pg_tool(name: str) -> str:
    from pgcluster import pg_bindir

    p = pg_bindir() / name
    return str(p) if p.exists() else (shutil.which(name) or name)


def pgbench_env() -> dict:
    env = dict(os.environ)
    env.update(PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    env.pop("PGPASSWORD", None)
    return env


def pgbench_init(cluster: PgCluster, scale: int) -> None:
    print(f"pgbench -i -s {scale} ...", flush=True)
    proc = subprocess.run(
        [pg_tool("pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1",
         "-p", str(cluster.port), "-U", "postgres", "postgres"],
        capture_output=True, text=True, timeout=600, env=pgbench_env(), stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise BenchError(f"pgbench -i failed: {proc.stderr.strip()}")


class PgBouncer:
    def __init__(self, pg_port: int, pool_size: int, max_clients: int):
        exe = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer"
                                            if os.path.exists("/usr/sbin/pgbouncer") else None)
        if exe is None:
            raise BenchError("pgbouncer not found (bench/run.sh installs Debian's 'pgbouncer')")
        self.dir = Path(tempfile.mkdtemp(prefix="ithaca-bench-pgbouncer-"))
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.log = self.dir / "pgbouncer.log"
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={pg_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            f"max_client_conn = {max_clients}\n"
            f"logfile = {self.log}\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        cmd = [exe]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root; -u switches user
            pw = pwd.getpwnam("postgres")
            for p in (self.dir, *self.dir.iterdir()):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            cmd += ["-u", "postgres"]
        cmd.append(str(ini))
        self._out = open(self.dir / "stdout.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_port("127.0.0.1", self.port, 10, alive=lambda: self.proc.poll() is None)
        except (ConnectionError, TimeoutError) as e:
            out = (self.dir / "stdout.log").read_text(errors="replace")
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            self.stop()
            raise BenchError(f"pgbouncer failed to start: {e}\n{out}\n{log}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------ runs
@dataclass
class Cell:
    tps: list[float] = field(default_factory=list)
    transactions: int = 0
    cpu_seconds: float = 0.0


def run_pgbench(target: Target, mode: str, clients: int, duration: int) -> tuple[float, int]:
    cmd = [pg_tool("pgbench"), "-n", "-S", "-M", mode, "-c", str(clients),
           "-j", str(min(clients, 2)), "-T", str(duration),
           "-h", "127.0.0.1", "-p", str(target.port), "-U", "postgres", "postgres"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120,
                          env=pgbench_env(), stdin=subprocess.DEVNULL)
    tps = TPS_RE.search(proc.stdout)
    ntx = NTX_RE.search(proc.stdout)
    if proc.returncode != 0 or not tps or not ntx:
        raise BenchError(f"pgbench against {target.name} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return float(tps.group(1)), int(ntx.group(1))


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per pgbench run")
    ap.add_argument("--clients", default="1,10,50")
    ap.add_argument("--modes", default="simple,extended")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS))
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--json", help="also write results to this file")
    ap.add_argument("--prepared", action="store_true",
                    help="ithaca with pool_reserve_prepared_statement yes (PgBouncer 1.18 has no "
                         "such feature; off by default for a like-for-like comparison)")
    args = ap.parse_args(argv)

    clients = [int(c) for c in args.clients.split(",") if c]
    modes = [m for m in args.modes.split(",") if m]
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in ALL_TARGETS:
            ap.error(f"unknown target {t!r} (choose from {', '.join(ALL_TARGETS)})")
    for m in modes:
        if m not in ("simple", "extended", "prepared"):
            ap.error(f"unknown mode {m!r}")
    if not (1 <= args.rounds <= 100 and 1 <= args.duration <= 3600 and clients
            and max(clients) <= 190):
        ap.error("rounds 1..100, duration 1..3600, clients 1..190")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    cluster: PgCluster | None = None
    bouncer: PgBouncer | None = None
    ithaca: IthacaProcess | None = None
    workdir = Path(tempfile.mkdtemp(prefix="ithaca-bench-"))
    try:
        print("starting PostgreSQL ...", flush=True)
        cluster = PgCluster()
        cluster.start()
        pgbench_init(cluster, args.scale)
        live: dict[str, Target] = {}
        if "direct" in targets:
            live["direct"] = Target("direct", cluster.port)
        if "pgbouncer" in targets:
            bouncer = PgBouncer(cluster.port, args.pool_size, max(200, max(clients) + 10))
            live["pgbouncer"] = Target("pgbouncer", bouncer.port, bouncer.proc.pid)
            print(f"pgbouncer on port {bouncer.port}", flush=True)
        if "ithaca" in targets:
            port = free_port()
            conf = make_config(cluster.port, port, pool="transaction",
                               pool_size=args.pool_size, console=False,
                               prepared=args.prepared)
            try:
                ithaca = IthacaProcess(conf, workdir / "ithaca", port, python=sys.executable)
            except IthacaStartError as e:
                raise BenchError(f"ithaca failed to start ({e}).\n"
                                 "Use --targets direct,pgbouncer to benchmark without it.") from None
            live["ithaca"] = Target("ithaca", port, ithaca.pid)
            print(f"ithaca on port {port}", flush=True)

        results: dict[tuple[str, int, str], Cell] = {}
        for mode in modes:
            for c in clients:
                for rnd in range(args.rounds):
                    for name, target in live.items():
                        cell = results.setdefault((mode, c, name), Cell())
                        before = tree_cpu_seconds(target.pid) if target.pid else 0.0
                        tps, ntx = run_pgbench(target, mode, c, args.duration)
                        after = tree_cpu_seconds(target.pid) if target.pid else 0.0
                        cell.tps.append(tps)
                        cell.transactions += ntx
                        cell.cpu_seconds += after - before
                        print(f"  {mode:8} c={c:<3} round {rnd + 1}/{args.rounds} "
                              f"{name:9} tps={tps:10.1f}", flush=True)

        rows = []
        for mode in modes:
            for c in clients:
                row: dict = {"mode": mode, "clients": c}
                for name in live:
                    cell = results[(mode, c, name)]
                    row[f"{name}_tps"] = statistics.median(cell.tps)
                    row[f"{name}_tps_runs"] = cell.tps
                    row[f"{name}_transactions"] = cell.transactions
                    if name != "direct":
                        row[f"{name}_cpu_us_per_tx"] = (
                            cell.cpu_seconds / cell.transactions * 1e6 if cell.transactions
                            else None)

                def ratio(a: str, b: str, row: dict = row) -> float | None:
                    x, y = row.get(f"{a}_tps"), row.get(f"{b}_tps")
                    return x / y if x is not None and y else None

                row["ithaca_over_pgbouncer"] = ratio("ithaca", "pgbouncer")
                row["ithaca_over_direct"] = ratio("ithaca", "direct")
                rows.append(row)

        print()
        print(f"median TPS of {args.rounds} round(s) x {args.duration}s, pgbench -S, "
              f"scale {args.scale}, pool_size {args.pool_size}")
        hdr = (f"{'mode':9}{'clients':>8}{'direct':>11}{'pgbouncer':>11}{'ithaca':>11}"
               f"{'ith/pgb':>9}{'ith/dir':>9}{'pgb us/tx':>11}{'ith us/tx':>11}")
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            print(f"{r['mode']:9}{r['clients']:>8}"
                  f"{fmt(r.get('direct_tps'), '.0f'):>11}"
                  f"{fmt(r.get('pgbouncer_tps'), '.0f'):>11}"
                  f"{fmt(r.get('ithaca_tps'), '.0f'):>11}"
                  f"{fmt(r['ithaca_over_pgbouncer'], '.2f'):>9}"
                  f"{fmt(r['ithaca_over_direct'], '.2f'):>9}"
                  f"{fmt(r.get('pgbouncer_cpu_us_per_tx'), '.1f'):>11}"
                  f"{fmt(r.get('ithaca_cpu_us_per_tx'), '.1f'):>11}")
        if args.json:
            meta = {"rounds": args.rounds, "duration": args.duration, "scale": args.scale,
                    "pool_size": args.pool_size, "targets": list(live),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count()}
            Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
            print(f"wrote {args.json}")
        return 0
    except BenchError as e:
        print(f"bench: ERROR: {e}", file=sys.stderr)
        return 2
    finally:
        if ithaca is not None:
            ithaca.terminate()
        if bouncer is not None:
            bouncer.stop()
        if cluster is not None:
            cluster.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
