#!/usr/bin/env python3
"""Measure the duplex daemon's own cost on the lab (scripts/lab.sh).

Resident memory and CPU of `duplex run` beside main and beside cloud, idle and while
pgbench writes on both sides, and replication latency with and without the daemons.

    scripts/bench-daemon.py

It builds the release binary, creates the databases duplex_benchd on both lab clusters,
initialises pgbench's tables on main (`pgbench -i -s 1`), copies their definitions to
cloud (pg_dump -s), gives pgbench_history a uuid primary key (gen_random_uuid(), so rows
inserted on both sides never collide), and runs `duplex setup` for cloud, then main,
replicating the four pgbench tables (replication role duplex_benchd_replicator, slots
duplex_benchd_m2c on main and duplex_benchd_c2m on cloud). At the end, and after a
crashed earlier run at the start, it drops everything again: the subscriptions
(disabled, detached from their slots, dropped), every slot of database duplex_benchd,
the databases and the role.

For each monitor interval (30 s, the default, and 1 s, the worst case) it starts both
daemons, waits until both answer 200 on /health/sync, then:
  idle  IDLE_SECS with nothing writing;
  load  LOAD_SECS of pgbench on both sides at once (built-in script PGBENCH_SCRIPT,
        PGBENCH_CLIENTS clients, one thread, rate-limited to PGBENCH_RATE tps per side).
For each phase and daemon it reports the largest VmRSS seen (sampled every second from
/proc/PID/status), VmRSS at the end, and CPU time (utime + stime of /proc/PID/stat, all
threads) divided by the phase's wall time, as a percentage of one core. It also reports
the CPU of the PostgreSQL backends serving the daemons' own connections (application_name
duplex_monitor / duplex_api, both clusters together), the pgbench tps, the subscriptions'
apply errors and conflict counters, and how long after the load both sides held the
same pgbench_history rows.

Latency: scripts/bench-latency.sh (given-URL mode) against the duplex_benchd databases,
LAG_ROUNDS times alternately with both daemons stopped and running (1 s interval).

Environment:
  IDLE_SECS (60)  LOAD_SECS (60)  PGBENCH_RATE (200)  PGBENCH_CLIENTS (2)
  PGBENCH_SCRIPT (tpcb-like; or simple-update)   LAG_N (1000 inserts per direction)
  LAG_ROUNDS (2)  INTERVALS ("30 1", monitor intervals in seconds)
  MAIN_DB_URL, CLOUD_DB_URL, DUPLEX_REPLICATION_PASSWORD, PG_BIN
                  the lab's; taken from `scripts/lab.sh env` when not set
  SKIP_BUILD=1    use target/release/duplex as it is
  KEEP_BENCH_DBS=1  keep duplex_benchd for inspection (the next run drops it first)
"""

from __future__ import annotations

import datetime
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

NAME = "bench-daemon"
ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "duplex"
BENCH_DB = "duplex_benchd"
BENCH_ROLE = "duplex_benchd_replicator"
SLOT_M2C = "duplex_benchd_m2c"  # on main, streamed by cloud's subscription
SLOT_C2M = "duplex_benchd_c2m"  # on cloud, streamed by main's subscription
ADDR = {"main": "127.0.0.1:18801", "cloud": "127.0.0.1:18802"}
TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
SIDES = ("main", "cloud")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Failed(Exception):
    """The benchmark cannot go on; the message says why."""


def log(msg: str) -> None:
    print(f"{NAME}: {msg}", file=sys.stderr, flush=True)


@dataclass
class Params:
    idle_secs: int
    load_secs: int
    pgbench_rate: int
    pgbench_clients: int
    pgbench_script: str
    lag_n: int
    lag_rounds: int
    intervals: list[int]

    @staticmethod
    def from_env() -> "Params":
        def whole(var: str, default: int) -> int:
            raw = os.environ.get(var, str(default))
            if not raw.isdigit():
                raise Failed(f"{var} must be a whole number (got '{raw}')")
            return int(raw)

        intervals = os.environ.get("INTERVALS", "30 1").split()
        if not all(i.isdigit() for i in intervals):
            raise Failed(f"INTERVALS must be whole numbers (got '{' '.join(intervals)}')")
        return Params(
            idle_secs=whole("IDLE_SECS", 60),
            load_secs=whole("LOAD_SECS", 60),
            pgbench_rate=whole("PGBENCH_RATE", 200),
            pgbench_clients=whole("PGBENCH_CLIENTS", 2),
            pgbench_script=os.environ.get("PGBENCH_SCRIPT", "tpcb-like"),
            lag_n=whole("LAG_N", 1000),
            lag_rounds=whole("LAG_ROUNDS", 2),
            intervals=[int(i) for i in intervals],
        )


def with_db(url: str, db: str) -> str:
    """postgres://user:pass@host:port/db -> the same URL for database `db`."""
    return re.sub(r"^([a-z]+://[^/]*)/[^?]*", rf"\g<1>/{db}", url)


class Lab:
    """The two clusters, the PostgreSQL tools and the bench databases' URLs."""

    def __init__(self) -> None:
        if not all(os.environ.get(v) for v in ("MAIN_DB_URL", "CLOUD_DB_URL", "DUPLEX_REPLICATION_PASSWORD")):
            out = subprocess.run([str(ROOT / "scripts" / "lab.sh"), "env"], check=True, capture_output=True, text=True)
            for line in out.stdout.splitlines():
                m = re.match(r"^(?:export )?([A-Z_]+)=(.*)$", line.strip())
                if m:
                    value = shlex.split(m.group(2))
                    os.environ[m.group(1)] = value[0] if value else ""
        pg_bin = os.environ.get("PG_BIN", "")
        self.psql, self.pgbench, self.pg_dump = (str(Path(pg_bin) / t) if pg_bin else t for t in ("psql", "pgbench", "pg_dump"))
        for tool in (self.psql, self.pgbench, self.pg_dump, "curl"):
            if not shutil.which(tool):
                raise Failed(f"{tool} not found (set PG_BIN)")
        self.url = {
            "main": with_db(os.environ["MAIN_DB_URL"], BENCH_DB),
            "cloud": with_db(os.environ["CLOUD_DB_URL"], BENCH_DB),
        }

    def sql(self, url: str, *args: str, check: bool = True) -> str:
        """psql, quiet, unaligned tuples only, stop on the first error."""
        env = dict(os.environ, PGAPPNAME="duplex_benchd", PGOPTIONS="-c client_min_messages=warning")
        out = subprocess.run(
            [self.psql, url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *args],
            env=env, capture_output=True, text=True,
        )
        if check and out.returncode != 0:
            raise Failed(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def query(self, url: str, sql: str, check: bool = True) -> str:
        return self.sql(url, "-c", sql, check=check)

    def cleanup(self) -> None:
        """Drop what this script creates; every step tolerates absence."""
        for url in self.url.values():
            admin = with_db(url, "postgres")
            if self.query(admin, f"SELECT count(*) FROM pg_database WHERE datname = '{BENCH_DB}'", check=False) != "1":
                continue
            subs = self.query(url, "SELECT subname FROM pg_subscription WHERE subdbid = "
                                   "(SELECT oid FROM pg_database WHERE datname = current_database())", check=False)
            for sub in subs.split():
                try:
                    self.sql(url, "-c", f'ALTER SUBSCRIPTION "{sub}" DISABLE',
                             "-c", f'ALTER SUBSCRIPTION "{sub}" SET (slot_name = NONE)',
                             "-c", f'DROP SUBSCRIPTION "{sub}"')
                except Failed:
                    log(f"warning: could not drop subscription {sub}")
        for url in self.url.values():
            admin = with_db(url, "postgres")
            # A walsender may take a moment to notice that its subscriber went away.
            for _ in range(10):
                self.query(admin, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                                  f"WHERE database = '{BENCH_DB}' AND active_pid IS NOT NULL", check=False)
                self.query(admin, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                  f"WHERE database = '{BENCH_DB}' AND NOT active", check=False)
                if self.query(admin, f"SELECT count(*) FROM pg_replication_slots WHERE database = '{BENCH_DB}'", check=False) == "0":
                    break
                time.sleep(0.5)
            try:
                self.query(admin, f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
            except Failed:
                log(f"warning: could not drop {BENCH_DB}")
        for url in self.url.values():
            try:
                self.query(with_db(url, "postgres"), f"DROP ROLE IF EXISTS {BENCH_ROLE}")
            except Failed:
                log(f"warning: could not drop role {BENCH_ROLE}")


def ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def healthy(addr: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{addr}/health/sync", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def listening(addr: str) -> bool:
    try:
        urllib.request.urlopen(f"http://{addr}/", timeout=2)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


@dataclass
class Bench:
    lab: Lab
    p: Params
    work: Path
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)
    loads: dict[str, subprocess.Popen] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)
    lag: list[tuple[str, str, str, str]] = field(default_factory=list)

    # --- the daemons -------------------------------------------------------------

    def duplex_env(self, side: str, **extra: str) -> dict[str, str]:
        peer = "cloud" if side == "main" else "main"
        env = dict(os.environ, INSTANCE_ROLE=side, LOCAL_DB_URL=self.lab.url[side],
                   REMOTE_DB_URL=self.lab.url[peer], DUPLEX_HTTP_ADDR=ADDR[side],
                   REPLICATION_SLOT_NAME=SLOT_C2M if side == "main" else SLOT_M2C)
        env.update(extra)
        return env

    def duplex(self, side: str, *args: str) -> list[str]:
        return [str(BIN), "--config", str(self.work / "duplex.toml"), *args]

    def start_daemons(self, interval: int) -> None:
        for side in SIDES:
            if listening(ADDR[side]):
                raise Failed(f"something already listens on {ADDR[side]} (an earlier run's daemon?)")
        for side in SIDES:
            env = self.duplex_env(side, DUPLEX_MONITOR_INTERVAL_SECS=str(interval),
                                  DUPLEX_ADMIN_TOKEN=f"benchd-{secrets.token_hex(16)}")
            with open(self.work / f"daemon-{side}-{interval}.log", "w") as err:
                self.daemons[side] = subprocess.Popen(self.duplex(side, "run"), env=env, stdin=subprocess.DEVNULL,
                                                      stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        for side in SIDES:
            while not healthy(ADDR[side]):
                if not alive(self.daemons[side]):
                    sys.stderr.write(self.tail(f"daemon-{side}-{interval}.log"))
                    raise Failed(f"the {side} daemon exited")
                if time.monotonic() > deadline:
                    raise Failed(f"the {side} daemon did not report healthy within 60 s")
                time.sleep(0.2)
        log(f"daemons up (monitor interval {interval}s): main pid {self.daemons['main'].pid}, "
            f"cloud pid {self.daemons['cloud'].pid}")

    def stop_daemon(self, side: str) -> None:
        proc = self.daemons.pop(side, None)
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log(f"warning: the {side} daemon (pid {proc.pid}) did not exit within 10 s of SIGTERM; killing it")
            proc.kill()
            rc = proc.wait()
        if rc != 0:
            log(f"warning: the {side} daemon (pid {proc.pid}) exited with status {rc} (log: {self.work}/daemon-{side}-*.log)")

    def stop_daemons(self) -> None:
        for side in SIDES:
            self.stop_daemon(side)

    def tail(self, name: str, n: int = 20) -> str:
        lines = (self.work / name).read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:]) + "\n"

    # --- sampling ----------------------------------------------------------------

    def daemon_backends(self) -> list[int]:
        """PIDs of the PostgreSQL backends serving the daemons' own connections."""
        pids = []
        for url in self.lab.url.values():
            out = self.lab.query(url, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                      "AND datname = current_database() "
                                      "AND application_name IN ('duplex_monitor', 'duplex_api', 'duplex_run')")
            pids += [int(p) for p in out.split()]
        return pids

    @staticmethod
    def backend_ticks(pids: list[int]) -> int:
        total = 0
        for pid in pids:
            try:
                total += ticks(pid)
            except OSError:
                pass
        return total

    @staticmethod
    def pct(t: int, secs: float) -> str:
        return f"{100 * t / CLK_TCK / secs:.2f}"

    def phase(self, interval: int, kind: str) -> None:
        """Sample both daemons for the phase's duration (idle, or load with pgbench)."""
        key = f"{interval}/{kind}"
        pids = self.daemon_backends()
        b0 = self.backend_ticks(pids)
        c0 = {s: ticks(self.daemons[s].pid) for s in SIDES}
        peak = {s: rss_kb(self.daemons[s].pid) for s in SIDES}
        t0 = time.monotonic()
        if kind == "load":
            for side in SIDES:
                out = open(self.work / f"pgbench-{side}-{interval}.out", "w")
                self.loads[side] = subprocess.Popen(
                    [self.lab.pgbench, "-n", "-b", self.p.pgbench_script, "-c", str(self.p.pgbench_clients), "-j", "1",
                     "-T", str(self.p.load_secs), "-R", str(self.p.pgbench_rate), self.lab.url[side]],
                    stdout=out, stderr=subprocess.STDOUT)
        while True:
            time.sleep(1)
            for side in SIDES:
                if not alive(self.daemons[side]):
                    raise Failed(f"the {side} daemon died (log: {self.work}/daemon-{side}-{interval}.log)")
                peak[side] = max(peak[side], rss_kb(self.daemons[side].pid))
            if kind == "load":
                if not any(alive(p) for p in self.loads.values()):
                    break
            elif time.monotonic() - t0 >= self.p.idle_secs:
                break
        elapsed = time.monotonic() - t0
        b1 = self.backend_ticks(pids)
        for side in SIDES:
            pid = self.daemons[side].pid
            self.results[f"{key}/{side}/cpu"] = self.pct(ticks(pid) - c0[side], elapsed)
            self.results[f"{key}/{side}/rssmax"] = f"{peak[side] / 1024:.1f}"
            self.results[f"{key}/{side}/rssend"] = f"{rss_kb(pid) / 1024:.1f}"
        self.results[f"{key}/backends"] = self.pct(b1 - b0, elapsed)
        self.results[f"{key}/secs"] = f"{elapsed:.0f}"
        if kind == "load":
            for side in SIDES:
                rc = self.loads.pop(side).wait()
                name = f"pgbench-{side}-{interval}.out"
                if rc != 0:
                    sys.stderr.write(self.tail(name))
                    raise Failed(f"pgbench on {side} failed (status {rc})")
                text = (self.work / name).read_text()
                tps = re.search(r"^tps = ([0-9.]+) ", text, re.M)
                failed = re.search(r"^number of failed transactions: ([0-9]+)", text, re.M)
                self.results[f"{key}/{side}/tps"] = f"{float(tps.group(1)):.1f}" if tps else "-"
                self.results[f"{key}/{side}/failed"] = failed.group(1) if failed else "?"
            self.results[f"{key}/catchup"] = self.catch_up()
        r = self.results
        log(f"interval {interval}s, {kind}: main {r[f'{key}/main/cpu']}% {r[f'{key}/main/rssmax']} MiB, "
            f"cloud {r[f'{key}/cloud/cpu']}% {r[f'{key}/cloud/rssmax']} MiB")

    def catch_up(self) -> str:
        """Seconds from the end of the load until both sides hold the same pgbench_history rows."""
        start = time.monotonic()
        while True:
            m, c = (self.lab.query(self.lab.url[s], "SELECT count(*) FROM pgbench_history") for s in SIDES)
            waited = time.monotonic() - start
            if m == c:
                return str(int(waited))
            if waited >= 120:
                return f"no (main {m} rows, cloud {c} after 120 s)"
            time.sleep(0.5)

    def sub_stats(self, side: str) -> str:
        """Apply errors and non-zero conflict counters of this database's subscription."""
        return self.lab.sql(self.lab.url[side], "-F", " ", "-c", """
            SELECT s.subname, s.subenabled, st.apply_error_count, st.sync_error_count,
                   coalesce((SELECT string_agg(key || '=' || value, ',') FROM jsonb_each_text(to_jsonb(st))
                             WHERE key LIKE 'confl%' AND value <> '0'), 'none')
            FROM pg_subscription AS s JOIN pg_stat_subscription_stats AS st ON st.subid = s.oid
            WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())""")

    # --- latency -----------------------------------------------------------------

    def latency(self, label: str) -> None:
        out = subprocess.run([str(ROOT / "scripts" / "bench-latency.sh"), self.lab.url["main"], self.lab.url["cloud"]],
                             env=dict(os.environ, BENCH_N=str(self.p.lag_n)), capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            raise Failed("scripts/bench-latency.sh failed")
        shown = []
        for line in out.stdout.splitlines():
            cols = line.split()
            if len(cols) >= 5 and cols[0] in ("main_to_cloud", "cloud_to_main"):
                direction, rows, p50, _p90, p99 = cols[:5]
                if rows != str(self.p.lag_n):
                    raise Failed(f"latency: {direction} measured {rows} rows, expected {self.p.lag_n}")
                self.lag.append((label, direction, p50, p99))
                shown.append(f"{direction} p50 {p50} p99 {p99}")
        log(f"latency, {label}: {'; '.join(shown)}")

    # --- the run -----------------------------------------------------------------

    def prepare(self) -> None:
        lab = self.lab
        (self.work / "duplex.toml").write_text(
            "[tables]\ninclude = [" + ", ".join(f'"{t}"' for t in TABLES) + "]\n\n"
            f'[replication]\nuser = "{BENCH_ROLE}"\n')
        log(f"creating {BENCH_DB} on both clusters; pgbench tables on main (scale 1)")
        for url in lab.url.values():
            lab.query(with_db(url, "postgres"), f"CREATE DATABASE {BENCH_DB}")
        init = subprocess.run([lab.pgbench, "-i", "-s", "1", "-q", lab.url["main"]], capture_output=True, text=True)
        if init.returncode != 0:
            sys.stderr.write(init.stdout + init.stderr)
            raise Failed("pgbench -i failed")
        # pgbench_history has no primary key; a uuid generated where the row is inserted
        # never collides with the other side's rows (a sequence would: they are per side).
        lab.query(lab.url["main"], "ALTER TABLE public.pgbench_history "
                                   "ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY")
        schema = subprocess.run([lab.pg_dump, "--schema-only", "--no-owner", "--no-privileges",
                                 *(f"--table=public.{t}" for t in TABLES), lab.url["main"]],
                                check=True, capture_output=True, text=True).stdout
        (self.work / "schema.sql").write_text(schema)
        lab.sql(lab.url["cloud"], "-f", str(self.work / "schema.sql"))
        for side in ("cloud", "main"):
            log(f"duplex setup ({side})")
            out = subprocess.run(self.duplex(side, "setup"), env=self.duplex_env(side), capture_output=True, text=True)
            (self.work / f"setup-{side}.out").write_text(out.stdout + out.stderr)
            if out.returncode != 0:
                sys.stderr.write(out.stdout + out.stderr)
                raise Failed(f"duplex setup failed for {side}")
        if lab.query(lab.url["cloud"], "SELECT count(*) FROM pgbench_accounts") != "100000":
            raise Failed("cloud did not copy main's pgbench_accounts")

    def measure(self) -> None:
        p = self.p
        for interval in p.intervals:
            self.start_daemons(interval)
            log(f"interval {interval}s: idle for {p.idle_secs}s")
            self.phase(interval, "idle")
            log(f"interval {interval}s: pgbench {p.pgbench_script} on both sides for {p.load_secs}s "
                f"at {p.pgbench_rate} tps each")
            self.phase(interval, "load")
            self.stop_daemons()
        for round_ in range(1, p.lag_rounds + 1):
            log(f"latency round {round_}: daemons stopped")
            self.latency("stopped")
            self.start_daemons(1)
            log(f"latency round {round_}: daemons running (1 s interval)")
            self.latency("running")
            self.stop_daemons()

    def differing(self, table: str, key: str, value: str) -> int:
        """Rows whose value differs between the sides (concurrent updates overwrite crosswise)."""
        rows = [set(self.lab.query(self.lab.url[s], f"SELECT {key}, {value} FROM {table} ORDER BY {key}").splitlines())
                for s in SIDES]
        return len(rows[0] - rows[1])

    def report(self) -> None:
        lab, p, r = self.lab, self.p, self.results
        main = lab.url["main"]
        cpuinfo = Path("/proc/cpuinfo").read_text()
        cpu = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), "unknown CPU")
        mem_kb = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal:"))
        version = subprocess.run([str(BIN), "--version"], capture_output=True, text=True).stdout.strip() or str(BIN)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        stats = {s: self.sub_stats(s) for s in SIDES}
        diffs = [self.differing("pgbench_accounts", "aid", "abalance"),
                 self.differing("pgbench_tellers", "tid", "tbalance"),
                 self.differing("pgbench_branches", "bid", "bbalance")]
        # Every transaction adds its delta to one branch and logs it in pgbench_history
        # (which replicates without conflicts): sum(bbalance) falls short of sum(delta) by
        # the updates that a concurrent update from the other side overwrote.
        sum_delta = lab.query(main, "SELECT sum(delta) FROM pgbench_history")
        sum_b = {s: lab.query(lab.url[s], "SELECT sum(bbalance) FROM pgbench_branches") for s in SIDES}
        print()
        print(f"Machine: {os.cpu_count()} CPUs, {cpu}, {mem_kb / 1048576:.0f} GiB; "
              f"{lab.query(main, 'SHOW server_version')} on both sides; {now}")
        print(f"duplex: {version}; idle {p.idle_secs}s, load {p.load_secs}s of pgbench -b {p.pgbench_script} "
              f"-c {p.pgbench_clients} -j 1 -R {p.pgbench_rate} on each side")
        print()
        print("| interval | phase | daemon | RSS max MiB | RSS end MiB | CPU % of a core | pgbench tps (this side) |")
        print("|---|---|---|---|---|---|---|")
        for interval in p.intervals:
            for kind in ("idle", "load"):
                k = f"{interval}/{kind}"
                for side in SIDES:
                    print(f"| {interval} s | {kind} ({r[f'{k}/secs']} s) | {side} | {r[f'{k}/{side}/rssmax']} | "
                          f"{r[f'{k}/{side}/rssend']} | {r[f'{k}/{side}/cpu']} | {r.get(f'{k}/{side}/tps', '-')} |")
        print()
        print("| interval | phase | PostgreSQL backends of the daemons' connections, CPU % of a core (both clusters) |")
        print("|---|---|---|")
        for interval in p.intervals:
            for kind in ("idle", "load"):
                print(f"| {interval} s | {kind} | {r[f'{interval}/{kind}/backends']} |")
        print()
        for interval in p.intervals:
            k = f"{interval}/load"
            print(f"Load at {interval} s: failed pgbench transactions main {r.get(f'{k}/main/failed', '?')}, "
                  f"cloud {r.get(f'{k}/cloud/failed', '?')}; pgbench_history equal on both sides "
                  f"{r[f'{k}/catchup']} s after the load ended.")
        print("Subscriptions at the end (name enabled apply_errors sync_errors conflicts):")
        print(f"  main:  {stats['main']}")
        print(f"  cloud: {stats['cloud']}")
        print(f"Rows differing between the sides after the load: pgbench_accounts {diffs[0]}, "
              f"pgbench_tellers {diffs[1]}, pgbench_branches {diffs[2]}.")
        print(f"sum(delta) of pgbench_history (both sides): {sum_delta}; sum(bbalance): main {sum_b['main']}, "
              f"cloud {sum_b['cloud']} (the difference is lost updates).")
        print()
        print(f"Latency, scripts/bench-latency.sh -n {p.lag_n} against {BENCH_DB}, {p.lag_rounds} round(s), idle otherwise:")
        print()
        print("| daemons | direction | p50 ms | p99 ms |")
        print("|---|---|---|---|")
        for label, direction, p50, p99 in self.lag:
            if label == "running":
                label = "running (1 s interval)"
            print(f"| {label} | {direction.replace('_to_', ' → ')} | {p50} | {p99} |")

    def close(self, ok: bool) -> None:
        for proc in self.loads.values():
            proc.terminate()
        self.stop_daemons()
        if os.environ.get("KEEP_BENCH_DBS") == "1":
            log(f"keeping {BENCH_DB} (KEEP_BENCH_DBS=1)")
        else:
            log("cleaning up")
            self.lab.cleanup()
        if ok:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            log(f"logs kept in {self.work}")


def main() -> int:
    if not Path("/proc/self/stat").exists():
        raise Failed("needs Linux (/proc)")
    params = Params.from_env()
    lab = Lab()
    if os.environ.get("SKIP_BUILD") != "1":
        log("building the release binary")
        if subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT).returncode != 0:
            raise Failed("cargo build --release failed")
    if not os.access(BIN, os.X_OK):
        raise Failed(f"{BIN} is missing")
    try:
        lab.cleanup()
    except Failed:
        pass
    bench = Bench(lab, params, Path(tempfile.mkdtemp()))
    # SIGTERM ends the run like Ctrl-C: through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    ok = False
    try:
        bench.prepare()
        bench.measure()
        bench.report()
        ok = True
    finally:
        bench.close(ok)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as e:
        log(f"error: {e}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
