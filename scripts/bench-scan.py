#!/usr/bin/env python3
"""Measure the verifying scanner (`duplex scan`, `duplex integrity --checksum`) on the lab.

    scripts/bench-scan.py

It creates the database duplex_benchs on both lab clusters, applies duplex's migrations
there (psql, sql/migrations/*.sql), and builds the same table on both sides, shaped like an
application table:

    app_event(id bigint primary key, user_id int, kind text, score int,
              payload jsonb, note text (NULL in 2 of 3 rows), created_at timestamptz)

with ROWS rows generated deterministically (so both sides start identical). No
replication is set up: the scanner waits only for directions that have a subscription.

Cases, each timed (wall clock) with the peak RSS of the duplex process (/usr/bin/time -v):
  floor      PostgreSQL's own floor: `SELECT bit_xor(hash_record_extended(t, 0)) FROM
             app_event t` on both sides at once (two psql processes in parallel);
  identical  `duplex integrity --checksum` and `duplex scan --dry-run` on identical tables;
  100 diffs  100 scattered differences made on cloud (60 updates, 40 of them of the
             NULL-bearing column `note`, 20 deletes, 20 inserts), then
             `duplex integrity --checksum`, `duplex scan --dry-run` (finds and re-checks),
             `duplex scan` (repairs: main_authoritative, no updated-at column), and
             `duplex integrity --checksum` again, which must pass.
  incremental  after that complete pass: 0.5% of the rows updated alike on both sides (as
             replication leaves them) and `duplex scan --dry-run`, an incremental pass
             (only the keys committed since the last pass; nothing to find); then 0.5%
             updated on cloud only, `duplex scan --dry-run`, `duplex scan` (repairs
             them) and `duplex integrity --checksum`.
`bytes` is the scanner's own count of key, hash and count bytes it received (approximate;
protocol overhead not included).

With CONFLICTS=N set, only the many-conflicts case runs instead:
  conflicts  after a complete pass on identical tables, N scattered differences made on
             cloud (30% updates, 30% updates of the NULL-bearing column, 20% deletes,
             20% inserts), then `duplex scan --full --dry-run` (a full pass: finds and
             re-checks every one), `duplex scan --dry-run` (incremental: the same),
             `duplex scan` (incremental: finds, re-checks, repairs and logs every one),
             `duplex scan --full` (nothing left) and `duplex integrity --checksum`; then
             the count of scanner entries in main's duplex.conflict_log.

Environment:
  ROWS (1000000)   BIN (target/debug/duplex; the work is in PostgreSQL)
  MAIN_DB_URL, CLOUD_DB_URL, PG_BIN   the lab's; taken from `scripts/lab.sh env` when not set
  KEEP_BENCH_DBS=1  keep the databases (the next run drops them first)
  BENCH_DB (duplex_benchs)  the databases' name, so two runs on one lab do not collide
  CONFLICTS   run only the many-conflicts case with this many differences
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def with_db(url: str, db: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(url)
    return urlunsplit((u.scheme, u.netloc, "/" + db, u.query, u.fragment))


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


TABLE = """
CREATE TABLE app_event (
    id bigint PRIMARY KEY, user_id int NOT NULL, kind text NOT NULL, score int,
    payload jsonb NOT NULL, note text, created_at timestamptz NOT NULL
);
INSERT INTO app_event
SELECT i, (i % 5000)::int, (ARRAY['jump', 'login', 'upload', 'sync'])[1 + i % 4], ((i * 7919) % 1000)::int,
       jsonb_build_object('device', 'd' || (i % 97), 'alt', 3000 + i % 1000, 'ok', i % 2 = 0),
       CASE WHEN i % 3 = 0 THEN 'note ' || i END,
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'
  FROM generate_series(1::bigint, {rows}) i;
ANALYZE app_event;
"""


def prepare() -> None:
    for side in SIDES:
        sql(admin(side), f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        sql(admin(side), f"CREATE DATABASE {DB}")
        sql(bench(side), "CREATE SCHEMA duplex")
        for f in sorted((ROOT / "sql" / "migrations").glob("*.sql")):
            psql_file(bench(side), f)
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as t:
            t.write(TABLE.format(rows=ROWS))
        t0 = time.monotonic()
        psql_file(bench(side), Path(t.name))
        os.unlink(t.name)
        log(f"{side}: {ROWS} rows in {time.monotonic() - t0:.1f} s")
        # Frozen: the load's commit timestamps are gone, as for rows loaded long ago, so
        # the incremental case sees only what changed after the full pass.
        sql(bench(side), "VACUUM (FREEZE, ANALYZE) app_event")


def duplex(*args: str) -> tuple[float, int, int, str]:
    """Run duplex for main: seconds, peak RSS in KiB, exit code, stdout."""
    env = dict(ENV)
    env.update(
        INSTANCE_ROLE="main",
        LOCAL_DB_URL=bench("main"),
        REMOTE_DB_URL=bench("cloud"),
        REPLICATION_SLOT_NAME="duplex_benchs_c2m",
        DUPLEX_LOG="warn",
    )
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as cfg:
        cfg.write('[tables]\nschema = "public"\n')
    t0 = time.monotonic()
    out = subprocess.run(["/usr/bin/time", "-v", BIN, "--config", cfg.name, *args], capture_output=True, text=True, env=env)
    secs = time.monotonic() - t0
    os.unlink(cfg.name)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
    if out.returncode not in (0, 1):
        raise SystemExit(f"duplex {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return secs, int(m.group(1)) if m else 0, out.returncode, out.stdout


def floor() -> float:
    q = "SELECT bit_xor(hash_record_extended(t, 0)) FROM app_event t"
    t0 = time.monotonic()
    procs = [subprocess.Popen([PSQL, bench(s), "-X", "-q", "-A", "-t", "-c", q], stdout=subprocess.PIPE) for s in SIDES]
    for p in procs:
        p.wait()
    return time.monotonic() - t0


def bytes_of(stdout: str) -> int:
    try:
        v = json.loads(stdout)
    except json.JSONDecodeError:
        return 0
    tables = v.get("tables", [])
    return sum(int(t.get("bytes_read", 0)) for t in tables)


def differences() -> None:
    step = ROWS // 100
    ids = [1 + k * step + 7 for k in range(100)]
    upd, upd_null, dele, ins = ids[:20], ids[20:60], ids[60:80], ids[80:]
    stmts = [
        f"UPDATE app_event SET score = score + 1 WHERE id IN ({','.join(map(str, upd))})",
        # NULL-bearing column: NULL -> '' and text -> NULL.
        f"UPDATE app_event SET note = CASE WHEN note IS NULL THEN '' ELSE NULL END WHERE id IN ({','.join(map(str, upd_null))})",
        f"DELETE FROM app_event WHERE id IN ({','.join(map(str, dele))})",
        f"INSERT INTO app_event SELECT id + {ROWS} * 10, user_id, kind, score, payload, note, created_at FROM app_event WHERE id IN ({','.join(map(str, ins))})",
    ]
    for s in stmts:
        sql(bench("cloud"), s)


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
        INSERT INTO app_event SELECT id + {ROWS} * 10, user_id, kind, score, payload, note, created_at
          FROM app_event WHERE id IN ({lists[3]});""")
    rows = []
    for args in CONFLICT_RUNS:
        secs, rss, code, out = duplex(*args)
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
        rows.append((f"{n} diffs: duplex {' '.join(args[:-1])}", f"{secs:.2f}", f"{rss / 1024:.1f}", str(bytes_of(out)), found))
    entries = sql(bench("main"), "SELECT count(*) || ' entries, ' || count(DISTINCT record_id) || ' keys' FROM duplex.conflict_log WHERE detected_by = 'scanner'")
    rows.append(("main's duplex.conflict_log, scanner entries", "-", "-", "-", entries))
    return rows


def main() -> int:
    rows = []
    conflicts = int(os.environ.get("CONFLICTS", "0"))
    log(f"building {ROWS} rows per side in {DB}")
    prepare()
    if conflicts:
        try:
            rows = many_conflicts(conflicts)
        finally:
            if os.environ.get("KEEP_BENCH_DBS") != "1":
                for side in SIDES:
                    sql(admin(side), f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", check=False)
        print(f"\nrows per side: {ROWS}; binary: {BIN}\n")
        print("| case | seconds | peak RSS MiB | bytes read (both servers) | result |")
        print("|---|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return 0
    # An incremental pass looks at rows committed since the last complete pass minus a
    # one-minute margin: let the load age past it, as rows loaded long ago would (a
    # benchmark setting, not a wait for a condition).
    log("waiting 65 s for the load to age past the incremental margin")
    time.sleep(65)
    try:
        f = min(floor() for _ in range(3))
        rows.append(("floor: bit_xor(hash_record_extended) both sides at once", f"{f:.2f}", "-", "-", "-"))
        for args in (("integrity", "--checksum", "--json"), ("scan", "--dry-run", "--json")):
            secs, rss, code, out = min((duplex(*args) for _ in range(3)), key=lambda r: r[0])
            rows.append((f"identical: duplex {' '.join(args[:-1])}", f"{secs:.2f}", f"{rss / 1024:.1f}", str(bytes_of(out)), f"exit {code}"))
        differences()
        for args in (("integrity", "--checksum", "--json"), ("scan", "--dry-run", "--json"), ("scan", "--json"), ("integrity", "--checksum", "--json")):
            secs, rss, code, out = duplex(*args)
            found = "-"
            try:
                v = json.loads(out)
                if args[0] == "scan":
                    found = f"{v['differences']} found, {v['repaired']} repaired"
                else:
                    t = v["tables"][0]
                    found = f"{'match' if v['ok'] else 'differ'}: {len(t['differing_ranges'])} ranges, exit {code}"
            except (json.JSONDecodeError, KeyError, IndexError):
                pass
            rows.append((f"100 diffs: duplex {' '.join(args[:-1])}", f"{secs:.2f}", f"{rss / 1024:.1f}", str(bytes_of(out)), found))
        # 0.5% of the rows changed the same way on both sides, as replication leaves them:
        # the incremental pass's own cost (nothing to find). Then 0.5% on cloud only.
        for side in SIDES:
            sql(bench(side), "UPDATE app_event SET score = score + 1 WHERE id % 200 = 0")
        secs, rss, code, out = duplex("scan", "--dry-run", "--json")
        v = json.loads(out)
        t = v["tables"][0]
        rows.append(("0.5% changed on both sides: duplex scan --dry-run", f"{secs:.2f}", f"{rss / 1024:.1f}", str(bytes_of(out)), f"{t['mode']}: {t['changed_keys']} changed keys, {v['differences']} found"))
        sql(bench("cloud"), "UPDATE app_event SET score = score + 1 WHERE id % 200 = 100")
        for args in (("scan", "--dry-run", "--json"), ("scan", "--json"), ("integrity", "--checksum", "--json")):
            secs, rss, code, out = duplex(*args)
            found = "-"
            try:
                v = json.loads(out)
                if args[0] == "scan":
                    t = v["tables"][0]
                    found = f"{t['mode']}: {t['changed_keys']} changed keys, {v['differences']} found, {v['repaired']} repaired{', errors: ' + '; '.join(t['errors']) if t['errors'] else ''}"
                else:
                    found = f"{'match' if v['ok'] else 'differ'}, exit {code}"
            except (json.JSONDecodeError, KeyError, IndexError):
                pass
            rows.append((f"0.5% changed: duplex {' '.join(args[:-1])}", f"{secs:.2f}", f"{rss / 1024:.1f}", str(bytes_of(out)), found))
    finally:
        if os.environ.get("KEEP_BENCH_DBS") != "1":
            for side in SIDES:
                sql(admin(side), f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", check=False)
    print(f"\nrows per side: {ROWS}; binary: {BIN}\n")
    print("| case | seconds | peak RSS MiB | bytes read (both servers) | result |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
