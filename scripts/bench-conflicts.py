#!/usr/bin/env python3
"""Measure what in-stream conflict resolution costs replication, on the lab (scripts/lab.sh).

Side by side in one run: insert-to-applied latency (p50/p99) and apply throughput, with
duplex's resolution triggers installed versus without (issue 7; targets: p99 within 1.5x,
apply throughput at least 60% of native).

    scripts/bench-conflicts.py

It builds the release binary and creates two database pairs on the lab clusters (main
127.0.0.1:55432, cloud 127.0.0.1:55433), each with the same two tables:
  bench_item(id bigint PK, payload text, "updatedAt" timestamptz)   throughput
  bench_probe(side, id, run, sent_at, applied_at, "updatedAt")      latency
and runs `duplex setup` for cloud, then main, on both pairs (replication role
duplex_bconf_replicator, slots duplex_bconf_<pair>_m2c on main and _c2m on cloud):
  A "native"      duplex_bconf_native: afterwards `duplex setup --remove-resolution` on
                  both sides (or, with a binary that lacks it, DROP TRIGGER duplex_capture
                  and duplex_resolve on both tables), so replication is exactly as duplex
                  sets it up, minus the resolution triggers;
  B "resolution"  duplex_bconf_res: as `duplex setup` leaves it (last_write_wins on
                  "updatedAt" for both tables).
At the end, and after a crashed earlier run at the start, it drops everything it created:
subscriptions (disabled, detached from their slots, dropped), every slot of its
databases, the databases and the role. It starts no long-running process.

Latency (LAT_ROUNDS rounds, pairs taking turns A, B, A, B): as scripts/bench-latency.sh,
LAT_N single-row autocommit inserts into bench_probe from one session, LAT_PAUSE_SECS
apart after 20 warm-up rows, main -> cloud and cloud -> main. An ENABLE ALWAYS trigger
stamps applied_at = clock_timestamp() where the row is applied; the figure is applied_at -
sent_at on the receiver (both clusters share the machine clock). With resolution the
stamp is taken when the resolve trigger writes the row itself, so its lookups count.

Apply throughput (TP_ROUNDS rounds; in each, per cycle, A then B). Main's subscription
(cloud -> main) stays disabled during this phase. Each cycle: disable cloud's
subscription and wait until its slot is idle; write on main (and for `conflict` on
cloud) in transactions of BATCH rows; enable the subscription; wait until the slot on
main has confirmed main's WAL position; then check the rows on cloud and read the
markers' stamps (below). Cycles:
  insert    TP_ROWS new rows (INSERT ... SELECT generate_series, BATCH per transaction)
  update    the same TP_ROWS rows updated once each (new payload, "updatedAt" = now)
  conflict  TP_CONFLICT_ROWS of them updated first on cloud (older "updatedAt"), then on
            main (newer): every applied update meets a row changed on cloud since, an
            update_update conflict (duplex resolves and logs it; native PostgreSQL
            applies the remote row).
Main inserts a bench_probe marker row just before and just after the workload; cloud's
ALWAYS trigger stamps when each is applied (commit timestamps cannot be used: an applied
transaction keeps the origin's). rows/s = rows / (end marker applied - end of ALTER
SUBSCRIPTION ... ENABLE on cloud); steady rows/s = rows / (end - start marker applied),
which leaves out the apply worker's start. The cloud databases get log_min_messages = warning,
in both pairs alike, so that PostgreSQL's per-row conflict LOG lines do not flood the
shared lab's server log.

Profile (PROFILE=auto: only when a throughput target is missed; 1 always; 0 never), on
pair B, insert and update cycles: resolution with cloud's duplex_resolve disabled
(capture + metadata transport only), with main's duplex_capture disabled (resolve only:
without metadata every update counts as concurrent, so it takes the conflict path), and
full resolution with track_functions = pl on cloud: self time per trigger function in
the apply worker (pg_stat_user_functions).

Environment:
  LAT_N (1000)  LAT_PAUSE_SECS (0.005)  LAT_ROUNDS (2)
  TP_ROWS (30000)  TP_CONFLICT_ROWS (10000)  BATCH (100)  TP_ROUNDS (2)  PROFILE (auto)
  MAIN_DB_URL, CLOUD_DB_URL, DUPLEX_REPLICATION_PASSWORD, PG_BIN
                the lab's; taken from `scripts/lab.sh env` when not set
  SKIP_BUILD=1  use target/release/duplex as it is
  DUPLEX_BIN    use this duplex binary instead (no build), e.g. one built from a commit
  KEEP_BENCH_DBS=1  keep the databases for inspection (the next run drops them first)
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NAME = "bench-conflicts"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("DUPLEX_BIN") or ROOT / "target" / "release" / "duplex")
BENCH_ROLE = "duplex_bconf_replicator"
SIDES = ("main", "cloud")
SUB = {"cloud": "duplex_main_to_cloud", "main": "duplex_cloud_to_main"}  # subscription on that side
WARMUP = 20
P99_TARGET = 1.5
TP_TARGET = 0.60

SCHEMA = """
CREATE TABLE public.bench_item (
    id          bigint      PRIMARY KEY,
    payload     text        NOT NULL,
    "updatedAt" timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE public.bench_probe (
    side        text        NOT NULL,
    id          bigserial   NOT NULL,
    run         text        NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    applied_at  timestamptz,
    "updatedAt" timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (side, id)
);
CREATE FUNCTION public.bench_probe_applied_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.applied_at := clock_timestamp();
    RETURN NEW;
END
$$;
CREATE TRIGGER bench_probe_applied_at BEFORE INSERT ON public.bench_probe
    FOR EACH ROW EXECUTE FUNCTION public.bench_probe_applied_at();
ALTER TABLE public.bench_probe ENABLE ALWAYS TRIGGER bench_probe_applied_at;
"""


class Failed(Exception):
    """The benchmark cannot go on; the message says why."""


def log(msg: str) -> None:
    print(f"{NAME}: {msg}", file=sys.stderr, flush=True)


def whole(var: str, default: int) -> int:
    raw = os.environ.get(var, str(default))
    if not raw.isdigit() or int(raw) == 0:
        raise Failed(f"{var} must be a positive whole number (got '{raw}')")
    return int(raw)


def with_db(url: str, db: str) -> str:
    """postgres://user:pass@host:port/db -> the same URL for database `db`."""
    return re.sub(r"^([a-z]+://[^/]*)/[^?]*", rf"\g<1>/{db}", url)


def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation (as percentile_cont)."""
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Pair:
    key: str    # A or B
    label: str  # native or resolution
    db: str
    url: dict[str, str] = field(default_factory=dict)

    def slot(self, side: str) -> str:
        """The slot that `side`'s subscription streams from (it lives on the peer)."""
        return f"{self.db}_{'m2c' if side == 'cloud' else 'c2m'}"


class Lab:
    """The two clusters and the PostgreSQL tools."""

    def __init__(self) -> None:
        if not all(os.environ.get(v) for v in ("MAIN_DB_URL", "CLOUD_DB_URL", "DUPLEX_REPLICATION_PASSWORD")):
            out = subprocess.run([str(ROOT / "scripts" / "lab.sh"), "env"], check=True, capture_output=True, text=True)
            for line in out.stdout.splitlines():
                m = re.match(r"^(?:export )?([A-Z_]+)=(.*)$", line.strip())
                if m:
                    value = shlex.split(m.group(2))
                    os.environ[m.group(1)] = value[0] if value else ""
        pg_bin = os.environ.get("PG_BIN", "")
        self.psql = str(Path(pg_bin) / "psql") if pg_bin else "psql"
        if not shutil.which(self.psql):
            raise Failed(f"{self.psql} not found (set PG_BIN)")
        self.base = {"main": os.environ["MAIN_DB_URL"], "cloud": os.environ["CLOUD_DB_URL"]}

    def sql(self, url: str, *args: str, check: bool = True, stdin: str | None = None) -> str:
        """psql, quiet, unaligned tuples only, stop on the first error."""
        env = dict(os.environ, PGAPPNAME="duplex_bconf", PGOPTIONS="-c client_min_messages=warning")
        out = subprocess.run([self.psql, url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *args],
                             env=env, capture_output=True, text=True, input=stdin)
        if check and out.returncode != 0:
            raise Failed(f"psql failed: {out.stderr.strip()[-2000:]}")
        return out.stdout.strip()

    def query(self, url: str, sql: str, check: bool = True) -> str:
        return self.sql(url, "-c", sql, check=check)

    def admin(self, side: str) -> str:
        return with_db(self.base[side], "postgres")

    def cleanup(self, dbs: list[str]) -> None:
        """Drop what this script creates; every step tolerates absence."""
        for side in SIDES:
            for db in dbs:
                if self.query(self.admin(side), f"SELECT count(*) FROM pg_database WHERE datname = '{db}'", check=False) != "1":
                    continue
                url = with_db(self.base[side], db)
                subs = self.query(url, "SELECT subname FROM pg_subscription WHERE subdbid = "
                                       "(SELECT oid FROM pg_database WHERE datname = current_database())", check=False)
                for sub in subs.split():
                    try:
                        self.sql(url, "-c", f'ALTER SUBSCRIPTION "{sub}" DISABLE',
                                 "-c", f'ALTER SUBSCRIPTION "{sub}" SET (slot_name = NONE)',
                                 "-c", f'DROP SUBSCRIPTION "{sub}"')
                    except Failed:
                        log(f"warning: could not drop subscription {sub} in {db} on {side}")
        names = ", ".join(f"'{d}'" for d in dbs)
        for side in SIDES:
            admin = self.admin(side)
            # A walsender may take a moment to notice that its subscriber went away.
            for _ in range(20):
                self.query(admin, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                                  f"WHERE database IN ({names}) AND active_pid IS NOT NULL", check=False)
                self.query(admin, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                  f"WHERE database IN ({names}) AND NOT active", check=False)
                if self.query(admin, f"SELECT count(*) FROM pg_replication_slots WHERE database IN ({names})",
                              check=False) == "0":
                    break
                time.sleep(0.5)
            for db in dbs:
                try:
                    self.query(admin, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                except Failed:
                    log(f"warning: could not drop {db} on {side}")
        for side in SIDES:
            try:
                self.query(self.admin(side), f"DROP ROLE IF EXISTS {BENCH_ROLE}")
            except Failed:
                log(f"warning: could not drop role {BENCH_ROLE} on {side}")


@dataclass
class Params:
    lat_n: int
    lat_pause: str
    lat_rounds: int
    tp_rows: int
    tp_conflict_rows: int
    batch: int
    tp_rounds: int
    profile: str

    @staticmethod
    def from_env() -> "Params":
        pause = os.environ.get("LAT_PAUSE_SECS", "0.005")
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", pause):
            raise Failed(f"LAT_PAUSE_SECS must be a number of seconds (got '{pause}')")
        profile = os.environ.get("PROFILE", "auto")
        if profile not in ("auto", "0", "1"):
            raise Failed(f"PROFILE must be auto, 0 or 1 (got '{profile}')")
        p = Params(lat_n=whole("LAT_N", 1000), lat_pause=pause, lat_rounds=whole("LAT_ROUNDS", 2),
                   tp_rows=whole("TP_ROWS", 30000), tp_conflict_rows=whole("TP_CONFLICT_ROWS", 10000),
                   batch=whole("BATCH", 100), tp_rounds=whole("TP_ROUNDS", 2), profile=profile)
        if p.tp_conflict_rows > p.tp_rows:
            raise Failed("TP_CONFLICT_ROWS must not exceed TP_ROWS")
        return p


@dataclass
class Bench:
    lab: Lab
    p: Params
    work: Path
    pairs: list[Pair]
    lat: dict[tuple[str, str], list[float]] = field(default_factory=dict)   # (pair, direction) -> ms, pooled
    lat_rounds: list[tuple[int, str, str, float, float]] = field(default_factory=list)
    tp: list[dict] = field(default_factory=list)
    profile: list[dict] = field(default_factory=list)
    fn_stats: str = ""
    next_base: int = 0
    load: list[tuple[str, str]] = field(default_factory=list)
    removal: str = ""

    # --- set-up ------------------------------------------------------------------

    def duplex_env(self, pair: Pair, side: str) -> dict[str, str]:
        peer = "cloud" if side == "main" else "main"
        return dict(os.environ, INSTANCE_ROLE=side, LOCAL_DB_URL=pair.url[side], REMOTE_DB_URL=pair.url[peer],
                    REPLICATION_SLOT_NAME=pair.slot(side))

    def duplex(self, pair: Pair, side: str, *args: str) -> None:
        cmd = [str(BIN), "--config", str(self.work / "duplex.toml"), *args]
        out = subprocess.run(cmd, env=self.duplex_env(pair, side), capture_output=True, text=True)
        (self.work / f"{pair.db}-{side}-{'-'.join(args).strip('-')}.out").write_text(out.stdout + out.stderr)
        if out.returncode != 0:
            sys.stderr.write(out.stdout + out.stderr)
            raise Failed(f"duplex {' '.join(args)} failed for {side} of {pair.db}")

    def prepare(self) -> None:
        lab = self.lab
        helptext = subprocess.run([str(BIN), "setup", "--help"], capture_output=True, text=True).stdout
        self.removal = "--remove-resolution" if "--remove-resolution" in helptext else "DROP TRIGGER"
        log(f"pair A loses its resolution by {self.removal}")
        (self.work / "duplex.toml").write_text(
            '[tables]\ninclude = ["bench_item", "bench_probe"]\n\n'
            f'[replication]\nuser = "{BENCH_ROLE}"\n')
        for pair in self.pairs:
            log(f"pair {pair.key} ({pair.label}): creating {pair.db} on both clusters, duplex setup cloud then main")
            for side in SIDES:
                lab.query(lab.admin(side), f"CREATE DATABASE {pair.db}")
                lab.sql(pair.url[side], "-c", SCHEMA)
            # Quiet PostgreSQL's per-row conflict LOG lines in the apply worker (both pairs alike).
            lab.query(lab.admin("cloud"), f"ALTER DATABASE {pair.db} SET log_min_messages = warning")
            for side in ("cloud", "main"):
                self.duplex(pair, side, "setup")
            if pair.key == "A":
                for side in SIDES:
                    if self.removal == "--remove-resolution":
                        self.duplex(pair, side, "setup", "--remove-resolution")
                    else:
                        lab.sql(pair.url[side], *(a for t in ("bench_item", "bench_probe") for a in (
                            "-c", f"DROP TRIGGER duplex_capture ON public.{t}", "-c", f"DROP TRIGGER duplex_resolve ON public.{t}")))
        for pair in self.pairs:
            for side in SIDES:
                n = lab.query(pair.url[side], "SELECT count(*) FROM pg_trigger WHERE tgname IN "
                                              "('duplex_capture', 'duplex_resolve') AND tgrelid = 'public.bench_item'::regclass")
                want = "0" if pair.key == "A" else "2"
                if n != want:
                    raise Failed(f"{pair.db} on {side}: {n} duplex triggers on bench_item, expected {want}")
            self.wait_ready(pair)

    def wait_ready(self, pair: Pair) -> None:
        """Both subscriptions enabled and every table in state ready."""
        deadline = time.monotonic() + 120
        for side in SIDES:
            while True:
                out = self.lab.query(pair.url[side], f"""
                    SELECT s.subenabled AND bool_and(r.srsubstate = 'r')
                    FROM pg_subscription s JOIN pg_subscription_rel r ON r.srsubid = s.oid
                    WHERE s.subname = '{SUB[side]}'
                      AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                    GROUP BY s.subenabled""")
                if out == "t":
                    break
                if time.monotonic() > deadline:
                    raise Failed(f"{SUB[side]} in {pair.db} on {side} not ready within 120 s (state {out or 'missing'})")
                time.sleep(0.2)

    # --- subscriptions -----------------------------------------------------------

    def set_sub(self, pair: Pair, side: str, enabled: bool) -> float:
        """Enable or disable `side`'s subscription; returns the server's clock after the commit."""
        url = pair.url[side]
        t = float(self.lab.sql(url, "-c", f"ALTER SUBSCRIPTION {SUB[side]} {'ENABLE' if enabled else 'DISABLE'}",
                               "-c", "SELECT extract(epoch FROM clock_timestamp())"))
        if not enabled:
            peer = "main" if side == "cloud" else "cloud"
            deadline = time.monotonic() + 30
            while self.lab.query(self.lab.admin(peer), "SELECT count(*) FROM pg_replication_slots "
                                 f"WHERE slot_name = '{pair.slot(side)}' AND active") != "0":
                if time.monotonic() > deadline:
                    raise Failed(f"slot {pair.slot(side)} still active 30 s after disabling {SUB[side]}")
                time.sleep(0.1)
        return t

    def wait_confirmed(self, pair: Pair, lsn: str, timeout: int = 300) -> None:
        """Wait (on main, server side) until cloud's slot has confirmed `lsn`."""
        self.lab.query(pair.url["main"], f"""
            DO $$
            DECLARE deadline timestamptz := clock_timestamp() + interval '{timeout} s';
            BEGIN
              WHILE coalesce((SELECT confirmed_flush_lsn FROM pg_replication_slots
                              WHERE slot_name = '{pair.slot("cloud")}'), '0/0') < '{lsn}'::pg_lsn LOOP
                IF clock_timestamp() > deadline THEN
                  RAISE EXCEPTION 'slot {pair.slot("cloud")} did not confirm {lsn} within {timeout} s';
                END IF;
                PERFORM pg_sleep(0.02);
              END LOOP;
            END $$""")

    # --- latency -----------------------------------------------------------------

    def latency(self, rnd: int, pair: Pair, sender: str) -> None:
        receiver = "cloud" if sender == "main" else "main"
        run = f"r{rnd}-{time.time_ns()}"
        for tag, count in ((f"warmup-{run}", WARMUP), (run, self.p.lat_n)):
            script = "SET synchronous_commit = on;\n" + "".join(
                f"INSERT INTO public.bench_probe (side, run) VALUES ('{sender}', '{tag}');\n"
                f"SELECT pg_sleep({self.p.lat_pause});\n" for _ in range(count))
            self.lab.sql(pair.url[sender], "-o", "/dev/null", "-f", "-", stdin=script)
            deadline = time.monotonic() + 120
            while True:
                have = int(self.lab.query(pair.url[receiver], "SELECT count(*) FROM public.bench_probe "
                                          f"WHERE side = '{sender}' AND run = '{tag}'"))
                if have >= count:
                    break
                if time.monotonic() > deadline:
                    raise Failed(f"latency: only {have} of {count} rows from {sender} arrived in {pair.db} within 120 s")
                time.sleep(0.2)
        ms = [float(v) for v in self.lab.query(pair.url[receiver], "SELECT extract(epoch FROM applied_at - sent_at) * 1000 "
                                               f"FROM public.bench_probe WHERE side = '{sender}' AND run = '{run}'").split()]
        direction = f"{sender} → {receiver}"
        self.lat.setdefault((pair.key, direction), []).extend(ms)
        p50, p99 = pct(ms, 0.5), pct(ms, 0.99)
        self.lat_rounds.append((rnd, pair.key, direction, p50, p99))
        log(f"latency round {rnd}, pair {pair.key}, {direction}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")

    # --- throughput --------------------------------------------------------------

    def batches(self, lo: int, hi: int, stmt: str) -> str:
        """One autocommit statement per BATCH ids of [lo, hi]; {a} and {b} are the bounds."""
        out = []
        for a in range(lo, hi + 1, self.p.batch):
            out.append(stmt.format(a=a, b=min(a + self.p.batch - 1, hi)) + ";\n")
        return "".join(out)

    def cycle(self, pair: Pair, kind: str, lo: int, hi: int, tag: str, label: str) -> dict:
        """One throughput cycle; returns the figures."""
        lab = self.lab
        main, cloud = pair.url["main"], pair.url["cloud"]
        self.set_sub(pair, "cloud", False)
        t_write = time.monotonic()
        if kind == "insert":
            script = self.batches(lo, hi, "INSERT INTO public.bench_item (id, payload) "
                                          f"SELECT g, '{tag}' || g FROM generate_series({{a}}, {{b}}) AS g")
        else:
            if kind == "conflict":
                # Cloud changes the rows first, with an older "updatedAt": main's later update must win.
                lab.sql(cloud, "-o", "/dev/null", "-f", "-", stdin=self.batches(lo, hi, (
                    f"UPDATE public.bench_item SET payload = 'cloud-{tag}', \"updatedAt\" = \"updatedAt\" - interval '1 hour' "
                    "WHERE id BETWEEN {a} AND {b}")))
                t_write = time.monotonic()
            script = self.batches(lo, hi, "UPDATE public.bench_item SET payload = '" + tag + "' || id, "
                                          "\"updatedAt\" = clock_timestamp() WHERE id BETWEEN {a} AND {b}")
        # Markers around the workload: bench_probe's ALWAYS trigger stamps when cloud applies
        # them. (Commit timestamps cannot tell: an applied transaction keeps the origin's.)
        marker = f"tp-{tag}{time.time_ns()}"
        lab.query(main, f"INSERT INTO public.bench_probe (side, run) VALUES ('main', 'start-{marker}')")
        lab.sql(main, "-o", "/dev/null", "-f", "-", stdin=script)
        lab.query(main, f"INSERT INTO public.bench_probe (side, run) VALUES ('main', 'end-{marker}')")
        write_secs = time.monotonic() - t_write
        lsn = lab.query(main, "SELECT pg_current_wal_lsn()")
        t_enable = self.set_sub(pair, "cloud", True)
        self.wait_confirmed(pair, lsn)
        rows = hi - lo + 1
        got = lab.query(cloud, f"SELECT count(*) FROM public.bench_item WHERE id BETWEEN {lo} AND {hi} "
                               f"AND payload = '{tag}' || id")
        if int(got) != rows:
            raise Failed(f"{label}: cloud of {pair.db} holds {got} of {rows} rows with main's version")
        stamps = dict(line.split("|") for line in lab.query(cloud, f"""
            SELECT split_part(run, '-', 1), extract(epoch FROM applied_at) FROM public.bench_probe
            WHERE side = 'main' AND run IN ('start-{marker}', 'end-{marker}')""").splitlines())
        if set(stamps) != {"start", "end"}:
            raise Failed(f"{label}: the markers did not both reach cloud of {pair.db}")
        first_f, last_f = float(stamps["start"]), float(stamps["end"])
        total = last_f - t_enable
        steady = last_f - first_f
        r = dict(pair=pair.key, kind=kind, label=label, rows=rows, write_secs=write_secs, apply_secs=total,
                 start_secs=first_f - t_enable, rate=rows / total, steady=rows / steady if steady > 0 else float("nan"))
        log(f"{label}, pair {pair.key}, {kind}: {rows} rows applied in {total:.2f} s "
            f"({r['rate']:.0f} rows/s; steady {r['steady']:.0f} rows/s; first commit after {r['start_secs']:.2f} s; "
            f"written on main in {write_secs:.2f} s)")
        return r

    def ids(self, n: int) -> tuple[int, int]:
        lo = self.next_base + 1
        self.next_base += 10 ** (len(str(n)) + 1)
        return lo, lo + n - 1

    def throughput_round(self, rnd: int) -> None:
        p = self.p
        ranges = {pair.key: self.ids(p.tp_rows) for pair in self.pairs}
        for kind in ("insert", "update", "conflict"):
            for pair in self.pairs:
                lo, hi = ranges[pair.key]
                if kind == "conflict":
                    hi = lo + p.tp_conflict_rows - 1
                self.tp.append(dict(self.cycle(pair, kind, lo, hi, f"{kind[0]}{rnd}-", f"round {rnd}"), round=rnd))

    def run_profile(self) -> None:
        lab, b = self.lab, self.pairs[1]
        variants = [
            ("capture only (cloud's duplex_resolve disabled)", "cloud", "duplex_resolve", "ENABLE REPLICA"),
            ("resolve only (main's duplex_capture disabled)", "main", "duplex_capture", "ENABLE"),
        ]
        for label, side, trig, reenable in variants:
            lab.query(b.url[side], f"ALTER TABLE public.bench_item DISABLE TRIGGER {trig}")
            try:
                lo, hi = self.ids(self.p.tp_rows)
                for kind in ("insert", "update"):
                    self.profile.append(self.cycle(b, kind, lo, hi, f"p{len(self.profile)}-", label))
            finally:
                lab.query(b.url[side], f"ALTER TABLE public.bench_item {reenable} TRIGGER {trig}")
        # Full resolution with function timing in the apply worker (database setting: the
        # worker picks it up when the subscription is enabled again).
        label = "full, track_functions = pl"
        lab.query(lab.admin("cloud"), f"ALTER DATABASE {b.db} SET track_functions = 'pl'")
        lab.query(b.url["cloud"], "SELECT pg_stat_reset()")
        lo, hi = self.ids(self.p.tp_rows)
        for kind in ("insert", "update"):
            self.profile.append(self.cycle(b, kind, lo, hi, f"p{len(self.profile)}-", label))
        time.sleep(1.5)  # the apply worker flushes its statistics at most once a second
        self.fn_stats = lab.query(b.url["cloud"], """
            SELECT schemaname || '.' || funcname, calls, round(total_time::numeric, 1), round(self_time::numeric, 1)
            FROM pg_stat_user_functions ORDER BY self_time DESC""")
        lab.query(lab.admin("cloud"), f"ALTER DATABASE {b.db} RESET track_functions")

    # --- the run -----------------------------------------------------------------

    def measure(self) -> None:
        p = self.p
        self.load.append(("start", loadavg()))
        for rnd in range(1, p.lat_rounds + 1):
            for pair in self.pairs:
                for sender in SIDES:
                    self.latency(rnd, pair, sender)
        self.load.append(("after latency", loadavg()))
        for pair in self.pairs:
            self.set_sub(pair, "main", False)
        for rnd in range(1, p.tp_rounds + 1):
            self.throughput_round(rnd)
        self.load.append(("after throughput", loadavg()))
        if p.profile == "1" or (p.profile == "auto" and any(self.tp_ratio(k) < TP_TARGET for k in ("insert", "update", "conflict"))):
            log("profiling pair B")
            self.run_profile()
            self.load.append(("after profile", loadavg()))

    def tp_mean(self, pair: str, kind: str, key: str = "rate") -> float:
        return statistics.mean(r[key] for r in self.tp if r["pair"] == pair and r["kind"] == kind)

    def tp_ratio(self, kind: str) -> float:
        return self.tp_mean("B", kind) / self.tp_mean("A", kind)

    def report(self) -> None:
        lab, p = self.lab, self.p
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), "unknown CPU")
        mem_kb = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal:"))
        version = subprocess.run([str(BIN), "--version"], capture_output=True, text=True).stdout.strip() or str(BIN)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        server = lab.query(lab.admin("main"), "SHOW server_version")
        print()
        print(f"Machine: {os.cpu_count()} CPUs, {cpu}, {mem_kb / 1048576:.0f} GiB; PostgreSQL {server} on both sides; {now}")
        print(f"duplex: {version} ({BIN}); pair A's resolution removed by {self.removal}")
        print("Load average (1/5/15 min): " + "; ".join(f"{k} {v}" for k, v in self.load))
        print()
        print(f"Latency, insert to applied, {p.lat_n} single-row inserts per direction and round, "
              f"{p.lat_pause}s apart, {p.lat_rounds} rounds (A, B, A, B) pooled:")
        print()
        print("| direction | A native p50 ms | B resolution p50 ms | A native p99 ms | B resolution p99 ms | p99 B/A | target ≤ 1.5x |")
        print("|---|---|---|---|---|---|---|")
        for direction in ("main → cloud", "cloud → main"):
            a, b = self.lat[("A", direction)], self.lat[("B", direction)]
            ratio = pct(b, 0.99) / pct(a, 0.99)
            print(f"| {direction} | {pct(a, .5):.2f} | {pct(b, .5):.2f} | {pct(a, .99):.2f} | {pct(b, .99):.2f} | "
                  f"{ratio:.2f} | {'met' if ratio <= P99_TARGET else 'MISSED'} |")
        print()
        print("Per round: " + "; ".join(f"r{r} {k} {d} p50 {a:.2f} p99 {b:.2f}" for r, k, d, a, b in self.lat_rounds))
        print()
        print(f"Apply throughput main → cloud, rows/s (mean of {p.tp_rounds} rounds, A, B taking turns; "
              f"{p.batch} rows per transaction; from ALTER SUBSCRIPTION ENABLE to the last row applied):")
        print()
        print("| cycle | rows | A native rows/s | B resolution rows/s | B/A | target ≥ 60% | steady A | steady B | steady B/A |")
        print("|---|---|---|---|---|---|---|---|---|")
        for kind in ("insert", "update", "conflict"):
            rows = next(r["rows"] for r in self.tp if r["kind"] == kind)
            ratio = self.tp_ratio(kind)
            sa, sb = self.tp_mean("A", kind, "steady"), self.tp_mean("B", kind, "steady")
            print(f"| {kind} | {rows} | {self.tp_mean('A', kind):.0f} | {self.tp_mean('B', kind):.0f} | {ratio:.0%} | "
                  f"{'met' if ratio >= TP_TARGET else 'MISSED'} | {sa:.0f} | {sb:.0f} | {sb / sa:.0%} |")
        print()
        print("| round | pair | cycle | rows/s | steady rows/s | apply s | first applied after s | written on main s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in self.tp:
            print(f"| {r['round']} | {r['pair']} | {r['kind']} | {r['rate']:.0f} | {r['steady']:.0f} | {r['apply_secs']:.2f} | "
                  f"{r['start_secs']:.2f} | {r['write_secs']:.2f} |")
        if self.profile:
            print()
            print("Profile, pair B (insert and update cycles, one round each):")
            print()
            print("| variant | cycle | rows/s | steady rows/s | vs A native (mean) | written on main s |")
            print("|---|---|---|---|---|---|")
            for r in self.profile:
                print(f"| {r['label']} | {r['kind']} | {r['rate']:.0f} | {r['steady']:.0f} | "
                      f"{r['rate'] / self.tp_mean('A', r['kind']):.0%} | {r['write_secs']:.2f} |")
            print()
            print("Apply worker on cloud, pg_stat_user_functions (full resolution, both cycles):")
            print()
            print("| function | calls | total ms | self ms |")
            print("|---|---|---|---|")
            for line in self.fn_stats.splitlines():
                print("| " + " | ".join(line.split("|")) + " |")
        stats = lab.query(self.pairs[1].url["cloud"], "SELECT count(*) FROM duplex.conflict_log")
        errs = "; ".join(f"{pair.key} {side} " + lab.query(pair.url[side], f"""
            SELECT st.apply_error_count || ' apply errors, update_origin_differs ' || st.confl_update_origin_differs
            FROM pg_subscription s JOIN pg_stat_subscription_stats st ON st.subid = s.oid WHERE s.subname = '{SUB[side]}'
              AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())""")
            for pair in self.pairs for side in SIDES)
        print()
        print(f"Conflicts logged by duplex on cloud of pair B: {stats}. Subscriptions: {errs}.")

    def close(self, ok: bool) -> None:
        if os.environ.get("KEEP_BENCH_DBS") == "1":
            log("keeping the databases (KEEP_BENCH_DBS=1)")
        else:
            log("cleaning up")
            self.lab.cleanup([p.db for p in self.pairs])
        if ok:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            log(f"logs kept in {self.work}")


def main() -> int:
    params = Params.from_env()
    lab = Lab()
    if os.environ.get("SKIP_BUILD") != "1" and not os.environ.get("DUPLEX_BIN"):
        log("building the release binary")
        if subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT).returncode != 0:
            raise Failed("cargo build --release failed")
    if not os.access(BIN, os.X_OK):
        raise Failed(f"{BIN} is missing")
    pairs = [Pair("A", "native", "duplex_bconf_native"), Pair("B", "resolution", "duplex_bconf_res")]
    for pair in pairs:
        pair.url = {side: with_db(lab.base[side], pair.db) for side in SIDES}
    dbs = [p.db for p in pairs]
    try:
        lab.cleanup(dbs)
    except Failed:
        pass
    bench = Bench(lab, params, Path(tempfile.mkdtemp(prefix="bench-conflicts.")), pairs)
    # SIGTERM ends the run like Ctrl-C: through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    ok = False
    t0 = time.monotonic()
    try:
        bench.prepare()
        bench.measure()
        bench.report()
        ok = True
    finally:
        bench.close(ok)
        log(f"run took {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as e:
        log(f"error: {e}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
