#!/usr/bin/env python3
"""Measure the verifying scanner (`duplex scan`, `duplex integrity --checksum`) on the lab,
side by side with reladiff 0.6.0 and PostgreSQL's own floor, in one run.

    ROWS=1000000 scripts/bench-scan.py

It creates the database BENCH_DB (duplex_benchs) on both lab clusters, applies duplex's
migrations there (psql, sql/migrations/*.sql), and builds the same table on both sides at
once (one `INSERT ... SELECT FROM generate_series` per server, keys and indexes built
after the load), shaped like an application table:

    app_event(id bigint primary key, user_id int, kind text, score int, payload jsonb,
              note text (NULL in 2 of 3 rows), created_at timestamptz,
              updated_at timestamptz, indexed)

with ROWS rows generated deterministically (so both sides start identical). The
`updated_at` column makes the table last_write_wins (detected by name). No replication
is set up: the scanner waits only for directions that have a subscription.

Cases, each timed (wall clock) with the peak RSS of the tool's process (/usr/bin/time -v)
and the bytes each server sent it (counted by a TCP relay in this script, TLS included):
  floor      PostgreSQL's own floor: `SELECT bit_xor(hash_record_extended(t, 0)) FROM
             app_event t` on both sides at once (two psql processes in parallel, best of 3);
  identical  `duplex integrity --checksum` and `duplex scan --dry-run` (best of 3), and
             reladiff over every column (`-k id -c %`) on identical tables;
  100 diffs  100 scattered differences made on cloud (60 updates, 40 of them of the
             NULL-bearing column `note`, 20 deletes, 20 inserts), then reladiff,
             `duplex integrity --checksum`, `duplex scan --dry-run` (finds and re-checks),
             `duplex scan` (repairs) and `duplex integrity --checksum` again, which must
             pass;
  incremental  after that complete pass: 0.5% of the rows updated alike on both sides (as
             replication leaves them, `updated_at` bumped) and `duplex scan --dry-run`, an
             incremental pass through the index on updated_at (nothing to find); the same
             again with that index dropped (commit timestamps); then, unless
             CLOUD_ONLY=0, 0.5% updated on cloud only, `duplex scan --dry-run`, `duplex
             scan` (repairs them) and `duplex integrity --checksum`.
`bytes (own count)` is the scanner's own count of key, hash and count bytes it received.

With CONFLICTS=N set, only the many-conflicts case runs instead:
  conflicts  after a complete pass on identical tables, N scattered differences made on
             cloud (30% updates, 30% updates of the NULL-bearing column, 20% deletes,
             20% inserts), then `duplex scan --full --dry-run` (a full pass: finds and
             re-checks every one), `duplex scan --dry-run` (incremental: the same, but
             without capture triggers the deletes leave no tombstone to see), `duplex
             scan` (incremental: finds, re-checks, repairs and logs), `duplex scan --full`
             (the deletes) and `duplex integrity --checksum`; then the count of scanner
             entries in main's duplex.conflict_log.

Environment:
  ROWS (1000000)   BIN (target/debug/duplex; the work is in PostgreSQL)
  BENCH_DB (duplex_benchs)   RELADIFF (reladiff in ${DUPLEX_CACHE_DIR:-/var/cache/duplex}/
  reladiff-0.6.0, made with `python3 -m venv DIR && DIR/bin/pip install
  'reladiff[postgresql]==0.6.0'`; RELADIFF=0 skips it)
  CLOUD_ONLY (1; 0 skips the 0.5%-on-cloud-only case, thousands of repairs)
  MAIN_DB_URL, CLOUD_DB_URL, PG_BIN   the lab's; taken from `scripts/lab.sh env` when not set
  KEEP_BENCH_DBS=1  keep BENCH_DB (the next run drops it first)
  BENCH_DUPLEX_LOG (warn)  duplex's DUPLEX_LOG, e.g. duplex=debug for the scanner's phases
  BENCH_STDERR     append every tool's stderr to this file
  CONFLICTS   run only the many-conflicts case with this many differences
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
DB = os.environ.get("BENCH_DB", "duplex_benchs")
SIDES = ("main", "cloud")


def log(msg: str) -> None:
    print(f"[bench-scan] {msg}", file=sys.stderr, flush=True)


def lab_env() -> dict[str, str]:
    env = dict(os.environ)
    if "MAIN_DB_URL" not in env or "PG_BIN" not in env:
        out = subprocess.run([str(ROOT / "scripts" / "lab.sh"), "env"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            m = re.match(r"^export ([A-Z_]+)=(.*)$", line.strip())
            if m and m.group(1) not in env:
                env[m.group(1)] = " ".join(shlex.split(m.group(2)))
    return env


ENV = lab_env()
PSQL = str(Path(ENV.get("PG_BIN", "")) / "psql") if ENV.get("PG_BIN") else "psql"
URL = {"main": ENV["MAIN_DB_URL"], "cloud": ENV["CLOUD_DB_URL"]}
ROWS = int(os.environ.get("ROWS", "1000000"))
BIN = os.environ.get("BIN", str(ROOT / "target" / "debug" / "duplex"))
CACHE = Path(os.environ.get("DUPLEX_CACHE_DIR", "/var/cache/duplex"))
RELADIFF = os.environ.get("RELADIFF", str(CACHE / "reladiff-0.6.0" / "bin" / "reladiff"))


def with_db(url: str, db: str, netloc: str | None = None, scheme: str | None = None) -> str:
    u = urlsplit(url)
    loc = u.netloc
    if netloc is not None:
        loc = loc.rsplit("@", 1)[0] + "@" + netloc if "@" in loc else netloc
    return urlunsplit((scheme or u.scheme, loc, "/" + db, u.query, u.fragment))


class Relay:
    """A TCP relay in front of one server that counts the bytes the server sends."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self.target = (u.hostname or "127.0.0.1", u.port or 5432)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            # As PostgreSQL and its clients do: without it, Nagle's algorithm holds back a
            # small message until the previous one is acknowledged, adding up to 40 ms to
            # every round trip that the direct connection does not have.
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while True:
                data = src.recv(262144)
                if not data:
                    break
                if count:
                    with self.lock:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def take(self) -> int:
        with self.lock:
            n, self.received = self.received, 0
        return n


RELAYS: dict[str, Relay] = {}
LAST_STDERR = [""]


def sql(url: str, query: str, check: bool = True) -> str:
    out = subprocess.run([PSQL, url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise SystemExit(f"psql failed: {out.stderr.strip()}")
    return out.stdout.strip()


def psql_file(url: str, path: Path) -> None:
    out = subprocess.run([PSQL, url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        # The URL carries a password: never print it.
        raise SystemExit(f"psql -f {path.name} failed: {out.stderr.strip()}")


def admin(side: str) -> str:
    return with_db(URL[side], "postgres")


def bench(side: str) -> str:
    return with_db(URL[side], DB)


def relayed(side: str, scheme: str | None = None) -> str:
    return with_db(URL[side], DB, netloc=f"127.0.0.1:{RELAYS[side].port}", scheme=scheme)


TABLE = """
SET synchronous_commit = off;
SET maintenance_work_mem = '512MB';
CREATE TABLE app_event (
    id bigint NOT NULL, user_id int NOT NULL, kind text NOT NULL, score int,
    payload jsonb NOT NULL, note text, created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
INSERT INTO app_event
SELECT i, (i % 5000)::int, (ARRAY['jump', 'login', 'upload', 'sync'])[1 + i % 4], ((i * 7919) % 1000)::int,
       jsonb_build_object('device', 'd' || (i % 97), 'alt', 3000 + i % 1000, 'ok', i % 2 = 0),
       CASE WHEN i % 3 = 0 THEN 'note ' || i END,
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'
  FROM generate_series(1::bigint, {rows}) i;
ALTER TABLE app_event ADD PRIMARY KEY (id);
CREATE INDEX app_event_updated_at ON app_event (updated_at);
"""


def load(side: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as t:
        t.write(TABLE.format(rows=ROWS))
    t0 = time.monotonic()
    psql_file(bench(side), Path(t.name))
    os.unlink(t.name)
    # Frozen: the load's commit timestamps are gone, as for rows loaded long ago, so
    # the incremental case sees only what changed after the full pass.
    sql(bench(side), "VACUUM (FREEZE, ANALYZE) app_event")
    log(f"{side}: {ROWS} rows in {time.monotonic() - t0:.1f} s")


def prepare() -> None:
    for side in SIDES:
        sql(admin(side), f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        sql(admin(side), f"CREATE DATABASE {DB}")
        sql(bench(side), "CREATE SCHEMA duplex")
        for f in sorted((ROOT / "sql" / "migrations").glob("*.sql")):
            psql_file(bench(side), f)
    # Both servers load at once.
    threads = [threading.Thread(target=load, args=(side,)) for side in SIDES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, int, str, int, int]:
    """Run cmd: seconds, peak RSS in KiB, exit code, stdout, bytes from main, from cloud."""
    for r in RELAYS.values():
        r.take()
    t0 = time.monotonic()
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    secs = time.monotonic() - t0
    LAST_STDERR[0] = out.stderr
    if os.environ.get("BENCH_STDERR"):
        with open(os.environ["BENCH_STDERR"], "a") as f:
            f.write(f"$ {' '.join(cmd[:4])}\n{out.stderr}\n")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
    if out.returncode not in (0, 1):
        raise SystemExit(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} failed ({out.returncode}): {out.stderr[-2000:]}")
    # Let the relay count the last bytes of connections being closed.
    time.sleep(0.2)
    return secs, int(m.group(1)) if m else 0, out.returncode, out.stdout, RELAYS["main"].take(), RELAYS["cloud"].take()


def duplex(*args: str) -> tuple[float, int, int, str, int, int]:
    env = dict(ENV)
    env.update(
        INSTANCE_ROLE="main",
        LOCAL_DB_URL=relayed("main"),
        REMOTE_DB_URL=relayed("cloud"),
        REPLICATION_SLOT_NAME="duplex_benchs_c2m",
        DUPLEX_LOG=os.environ.get("BENCH_DUPLEX_LOG", "warn"),
    )
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as cfg:
        cfg.write('[tables]\nschema = "public"\n')
    try:
        return timed([BIN, "--config", cfg.name, *args], env)
    finally:
        os.unlink(cfg.name)


RELADIFF_ERRORS: list[str] = []


def reladiff() -> tuple[float, int, int, str, int, int]:
    # psycopg2 reads the password from the URL; every column is compared.
    cmd = [RELADIFF, relayed("main", "postgresql"), "app_event", relayed("cloud", "postgresql"), "app_event", "-k", "id", "-c", "%"]
    r = timed(cmd)
    # What it logged as an error (it may still exit 0), without the URLs.
    RELADIFF_ERRORS.clear()
    RELADIFF_ERRORS.extend(line.strip()[:200] for line in LAST_STDERR[0].splitlines() if "error" in line.lower() and "://" not in line)
    return r


def reladiff_found(out: str) -> int:
    keys = set()
    for line in out.splitlines():
        m = re.match(r"^[+-] \(?'?(\d+)", line.strip())
        if m:
            keys.add(m.group(1))
    return len(keys)


def floor() -> float:
    q = "SELECT bit_xor(hash_record_extended(t, 0)) FROM app_event t"
    t0 = time.monotonic()
    procs = [subprocess.Popen([PSQL, bench(s), "-X", "-q", "-A", "-t", "-c", q], stdout=subprocess.PIPE) for s in SIDES]
    for p in procs:
        p.wait()
    return time.monotonic() - t0


def own_bytes(stdout: str) -> int:
    try:
        v = json.loads(stdout)
    except json.JSONDecodeError:
        return 0
    return sum(int(t.get("bytes_read", 0)) for t in v.get("tables", []))


def differences() -> None:
    step = ROWS // 100
    ids = [1 + k * step + 7 for k in range(100)]
    upd, upd_null, dele, ins = ids[:20], ids[20:60], ids[60:80], ids[80:]
    stmts = [
        f"UPDATE app_event SET score = score + 1 WHERE id IN ({','.join(map(str, upd))})",
        # NULL-bearing column: NULL -> '' and text -> NULL.
        f"UPDATE app_event SET note = CASE WHEN note IS NULL THEN '' ELSE NULL END WHERE id IN ({','.join(map(str, upd_null))})",
        f"DELETE FROM app_event WHERE id IN ({','.join(map(str, dele))})",
        f"INSERT INTO app_event SELECT id + {ROWS} * 10, user_id, kind, score, payload, note, created_at, updated_at FROM app_event WHERE id IN ({','.join(map(str, ins))})",
    ]
    for s in stmts:
        sql(bench("cloud"), s)


def errors() -> str:
    if not RELADIFF_ERRORS:
        return ""
    return f"; logged {len(RELADIFF_ERRORS)} error line(s), first: {RELADIFF_ERRORS[0].replace('|', '/')}"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def drop_bench_dbs() -> None:
    """Drop BENCH_DB on both servers, unless KEEP_BENCH_DBS=1."""
    if os.environ.get("KEEP_BENCH_DBS") != "1":
        for side in SIDES:
            sql(admin(side), f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", check=False)


def print_table(heading: str, rows: list[tuple[str, ...]]) -> None:
    """The results as a Markdown table under `heading`."""
    print(f"\n{heading}\n")
    print("| case | seconds | peak RSS MiB | bytes sent by main / cloud | bytes (own count) | result |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


CONFLICT_RUNS = (
    ("scan", "--full", "--dry-run", "--json"),
    ("scan", "--dry-run", "--json"),
    ("scan", "--json"),
    ("scan", "--full", "--json"),
    ("integrity", "--checksum", "--json"),
)


def many_conflicts(n: int) -> list[tuple[str, ...]]:
    """The CONFLICTS case: n scattered differences found, repaired and logged."""
    # A complete pass first, so that the later ones may be incremental; the load must age
    # past the incremental margin before it (see main()).
    log("waiting 65 s for the load to age past the incremental margin")
    time.sleep(65)
    duplex("scan", "--json")
    step = max(ROWS // n, 1)
    ids = [1 + k * step + step // 2 for k in range(n)]
    a, b, c = n * 3 // 10, n * 6 // 10, n * 8 // 10
    upd, upd_null, dele, ins = ids[:a], ids[a:b], ids[b:c], ids[c:]
    lists = [f"SELECT unnest('{{{','.join(map(str, x))}}}'::bigint[])" for x in (upd, upd_null, dele, ins)]
    sql(bench("cloud"), f"""
        UPDATE app_event SET score = score + 1 WHERE id IN ({lists[0]});
        UPDATE app_event SET note = CASE WHEN note IS NULL THEN '' ELSE NULL END WHERE id IN ({lists[1]});
        DELETE FROM app_event WHERE id IN ({lists[2]});
        INSERT INTO app_event SELECT id + {ROWS} * 10, user_id, kind, score, payload, note, created_at, updated_at
          FROM app_event WHERE id IN ({lists[3]});""")
    rows = []
    for args in CONFLICT_RUNS:
        secs, rss, code, out, bm, bc = duplex(*args)
        found = "-"
        try:
            v = json.loads(out)
            if args[0] == "scan":
                t = v["tables"][0]
                found = f"{t['mode']}: {t['changed_keys']} changed keys, {v['differences']} found, {v['repaired']} repaired, {v['logged']} logged, {t['skipped']} skipped, {t.get('settle_seconds', float('nan')):.2f} s of it re-checking and settling{', errors: ' + '; '.join(t['errors'][:3]) if t['errors'] else ''}"
            else:
                found = f"{'match' if v['ok'] else 'differ'}, exit {code}"
        except (json.JSONDecodeError, KeyError, IndexError):
            pass
        rows.append((f"{n} diffs: duplex {' '.join(args[:-1])}", f"{secs:.2f}", mib(rss), f"{bm:,} / {bc:,}", f"{own_bytes(out):,}", found))
    entries = sql(bench("main"), "SELECT count(*) || ' entries, ' || count(DISTINCT record_id) || ' keys' FROM duplex.conflict_log WHERE detected_by = 'scanner'")
    rows.append(("main's duplex.conflict_log, scanner entries", "-", "-", "-", "-", entries))
    return rows


def main() -> int:
    rows: list[tuple[str, ...]] = []
    loads: list[str] = []

    def note_load() -> None:
        loads.append(Path("/proc/loadavg").read_text().split()[0])

    def row(case: str, r: tuple[float, int, int, str, int, int], result: str, own: str = "-") -> None:
        secs, rss, _, _, bm, bc = r
        rows.append((case, f"{secs:.2f}", mib(rss), f"{bm:,} / {bc:,}", own, result))
        log(f"{case}: {secs:.2f} s, {mib(rss)} MiB, {result}")

    def duplex_row(case: str, args: tuple[str, ...]) -> None:
        r = duplex(*args, "--json")
        out, code = r[3], r[2]
        result = f"exit {code}"
        try:
            v = json.loads(out)
            if args[0] == "scan":
                t = v["tables"][0]
                result = f"{t['mode']}"
                if t["mode"] == "incremental":
                    result += f" {t.get('changes_by', '')}: {t['changed_keys']} changed keys"
                result += f", {v['differences']} found, {v['repaired']} repaired"
                if t["errors"]:
                    result += ", errors: " + "; ".join(t["errors"])
            else:
                t = v["tables"][0]
                result = f"{'match' if v['ok'] else 'differ'}: {len(t['differing_ranges'])} key ranges, exit {code}"
        except (json.JSONDecodeError, KeyError, IndexError):
            pass
        row(case, r, result, f"{own_bytes(out):,}")

    started = datetime.now(timezone.utc)
    log(f"building {ROWS} rows per side in {DB}")
    t0 = time.monotonic()
    prepare()
    log(f"loaded in {time.monotonic() - t0:.0f} s")
    for side in SIDES:
        RELAYS[side] = Relay(URL[side])
    conflicts = int(os.environ.get("CONFLICTS", "0"))
    if conflicts:
        try:
            rows = many_conflicts(conflicts)
        finally:
            drop_bench_dbs()
        print_table(f"rows per side: {ROWS}; binary: {BIN}; started {started:%Y-%m-%d %H:%M} UTC", rows)
        return 0
    # An incremental pass looks at rows changed since the last complete pass minus a
    # one-minute margin: let the load age past it, as rows loaded long ago would (a
    # benchmark setting, not a wait for a condition).
    log("waiting 65 s for the load to age past the incremental margin")
    time.sleep(65)
    use_reladiff = os.environ.get("RELADIFF") != "0" and Path(RELADIFF).exists()
    if not use_reladiff:
        log(f"reladiff not found at {RELADIFF}: not compared")
    try:
        note_load()
        f = min(floor() for _ in range(3))
        rows.append(("floor: bit_xor(hash_record_extended) both sides at once", f"{f:.2f}", "-", "-", "-", "-"))
        for args in (("integrity", "--checksum"), ("scan", "--dry-run")):
            best = None
            for _ in range(3):
                r = duplex(*args, "--json")
                if best is None or r[0] < best[0]:
                    best = r
            assert best is not None
            row(f"identical: duplex {' '.join(args)}", best, f"exit {best[2]}", f"{own_bytes(best[3]):,}")
        if use_reladiff:
            r = reladiff()
            row("identical: reladiff", r, f"{reladiff_found(r[3])} found, exit {r[2]}{errors()}")
        note_load()
        differences()
        if use_reladiff:
            r = reladiff()
            row("100 diffs: reladiff", r, f"{reladiff_found(r[3])} found, exit {r[2]}{errors()}")
        for args in (("integrity", "--checksum"), ("scan", "--dry-run"), ("scan",), ("integrity", "--checksum")):
            duplex_row(f"100 diffs: duplex {' '.join(args)}", args)
        note_load()
        # 0.5% of the rows changed the same way on both sides, as replication leaves them:
        # the incremental pass's own cost (nothing to find), by the updated_at index and
        # then, the index dropped, by commit timestamps.
        stamp = datetime.now(timezone.utc).isoformat()
        for side in SIDES:
            sql(bench(side), f"UPDATE app_event SET score = score + 1, updated_at = '{stamp}' WHERE id % 200 = 0")
        duplex_row("0.5% changed on both sides: duplex scan --dry-run (index on updated_at)", ("scan", "--dry-run"))
        for side in SIDES:
            sql(bench(side), "DROP INDEX app_event_updated_at")
        duplex_row("same, index dropped: duplex scan --dry-run (commit timestamps)", ("scan", "--dry-run"))
        if os.environ.get("CLOUD_ONLY") != "0":
            for side in SIDES:
                sql(bench(side), "CREATE INDEX app_event_updated_at ON app_event (updated_at)")
            stamp = datetime.now(timezone.utc).isoformat()
            sql(bench("cloud"), f"UPDATE app_event SET score = score + 1, updated_at = '{stamp}' WHERE id % 200 = 100")
            for args in (("scan", "--dry-run"), ("scan",), ("integrity", "--checksum")):
                duplex_row(f"0.5% changed on cloud only: duplex {' '.join(args)}", args)
        note_load()
    finally:
        drop_bench_dbs()
    print_table(f"rows per side: {ROWS}; binary: {BIN}; started {started:%Y-%m-%d %H:%M} UTC; "
                f"load average (1 min) during the cases: {', '.join(loads)}", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
