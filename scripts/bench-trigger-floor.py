#!/usr/bin/env python3
"""What any replica trigger costs the apply worker: the floor under in-stream resolution.

Issue 7 asks in-stream resolution to keep at least 60% of native apply throughput. This
script measures, on the lab clusters and without duplex, how fast cloud's apply worker
applies rows from main with no trigger and with the cheapest triggers of each kind
enabled as REPLICA triggers on the receiving table:

- `c_builtin`: PostgreSQL's own C trigger `suppress_redundant_updates_trigger` (updates
  only; it refuses inserts): what a trigger written in C costs, at least;
- `plpgsql_return`: a PL/pgSQL trigger that only `RETURN NEW`;
- `plpgsql_lookup`: PL/pgSQL, one primary-key lookup on the same table, `RETURN NEW`;
- `plpgsql_two_lookups`: PL/pgSQL, that lookup and one on a second table (a tombstone
  probe), `RETURN NEW`.

Each cycle disables cloud's subscription, writes ROWS rows on main (inserts, then updates
of the same rows) in transactions of BATCH rows, enables the subscription and takes the
time until main's slot has confirmed main's WAL position (waited for on the server). The
variants take turns, ROUNDS times. It drops its databases, subscription and slot at the
end.

    scripts/lab.sh up && eval "$(scripts/lab.sh env)" && scripts/bench-trigger-floor.py

Environment: ROWS (default 100000), BATCH (1000), ROUNDS (2).
"""

import os
import statistics
import subprocess
import sys
import time

DB = "duplex_tfloor"
ROWS = int(os.environ.get("ROWS", "100000"))
BATCH = int(os.environ.get("BATCH", "1000"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))

SCHEMA = """
CREATE TABLE public.t (id bigint PRIMARY KEY, payload text, "updatedAt" timestamptz NOT NULL DEFAULT now());
CREATE TABLE public.tomb (rel text, key text, PRIMARY KEY (rel, key));
"""

TRIGGERS = {
    "plpgsql_return": """
CREATE FUNCTION public.f_return() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN NEW; END $$;
CREATE TRIGGER trg BEFORE INSERT OR UPDATE ON public.t FOR EACH ROW EXECUTE FUNCTION public.f_return();
ALTER TABLE public.t ENABLE REPLICA TRIGGER trg;""",
    "plpgsql_lookup": """
CREATE FUNCTION public.f_lookup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM public.t WHERE id = NEW.id) THEN RETURN NEW; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER trg BEFORE INSERT OR UPDATE ON public.t FOR EACH ROW EXECUTE FUNCTION public.f_lookup();
ALTER TABLE public.t ENABLE REPLICA TRIGGER trg;""",
    "plpgsql_two_lookups": """
CREATE FUNCTION public.f_two() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM public.tomb WHERE rel = 'public.t' AND key = NEW.id::text) THEN RETURN NULL; END IF;
  IF EXISTS (SELECT 1 FROM public.t WHERE id = NEW.id) THEN RETURN NEW; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER trg BEFORE INSERT OR UPDATE ON public.t FOR EACH ROW EXECUTE FUNCTION public.f_two();
ALTER TABLE public.t ENABLE REPLICA TRIGGER trg;""",
    "c_builtin": """
CREATE TRIGGER trg BEFORE UPDATE ON public.t FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
ALTER TABLE public.t ENABLE REPLICA TRIGGER trg;""",
}
VARIANTS = ["none", "c_builtin", "plpgsql_return", "plpgsql_lookup", "plpgsql_two_lookups"]


def env(var: str) -> str:
    v = os.environ.get(var)
    if not v:
        sys.exit(f"{var} is not set: run `eval \"$(scripts/lab.sh env)\"` first")
    return v


def with_db(url: str, db: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + db
    return base + ("?" + query if query else "")


def psql(url: str, sql: str) -> str:
    r = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"psql failed: {r.stderr.strip()}\nstatement: {sql[:300]}")
    return r.stdout.strip()


def psql_file(url: str, script: str) -> None:
    r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-o", "/dev/null", "-f", "-"],
                       input=script, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"psql failed: {r.stderr.strip()}")


def loadavg() -> str:
    return " / ".join(open("/proc/loadavg").read().split()[:3])


class Bench:
    def __init__(self) -> None:
        self.admin = {"main": env("MAIN_DB_URL"), "cloud": env("CLOUD_DB_URL")}
        self.url = {s: with_db(u, DB) for s, u in self.admin.items()}
        self.results: dict[tuple[str, str], list[float]] = {}
        self.next_id = 1

    def cleanup(self) -> None:
        exists = psql(self.admin["cloud"], f"SELECT count(*) FROM pg_database WHERE datname = '{DB}'")
        if exists == "1":
            has_sub = psql(self.url["cloud"], "SELECT count(*) FROM pg_subscription WHERE subname = 'tfloor'")
            if has_sub == "1":
                psql(self.url["cloud"], "ALTER SUBSCRIPTION tfloor DISABLE")
                psql(self.url["cloud"], "ALTER SUBSCRIPTION tfloor SET (slot_name = NONE)")
                psql(self.url["cloud"], "DROP SUBSCRIPTION tfloor")
        psql(self.admin["main"], "SELECT pg_drop_replication_slot('tfloor') FROM pg_replication_slots "
                                 "WHERE slot_name = 'tfloor' AND NOT active")
        for side in ("main", "cloud"):
            psql(self.admin[side], f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")

    def prepare(self) -> None:
        self.cleanup()
        for side in ("main", "cloud"):
            psql(self.admin[side], f"CREATE DATABASE {DB}")
            psql_file(self.url[side], SCHEMA)
        psql(self.url["main"], "CREATE PUBLICATION tfloor FOR TABLE public.t")
        psql(self.url["main"], "SELECT pg_create_logical_replication_slot('tfloor', 'pgoutput')")
        # The subscription reaches main with the lab's admin login (a benchmark, not a deployment).
        psql(self.url["cloud"], f"CREATE SUBSCRIPTION tfloor CONNECTION '{self.url['main']}' PUBLICATION tfloor "
                                "WITH (create_slot = false, slot_name = 'tfloor', copy_data = false, origin = none, enabled = false)")
        psql(self.admin["cloud"], f"ALTER DATABASE {DB} SET log_min_messages = warning")

    def set_variant(self, v: str) -> None:
        psql(self.url["cloud"], "DROP TRIGGER IF EXISTS trg ON public.t")
        if v != "none":
            psql_file(self.url["cloud"], "DROP FUNCTION IF EXISTS public.f_return(), public.f_lookup(), public.f_two();\n"
                                         + TRIGGERS[v])

    def wait_slot_inactive(self) -> None:
        deadline = time.monotonic() + 30
        while psql(self.admin["main"], "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'tfloor' AND active") != "0":
            if time.monotonic() > deadline:
                sys.exit("slot tfloor still active 30 s after disabling the subscription")
            time.sleep(0.05)

    def cycle(self, v: str, kind: str, lo: int, hi: int) -> float:
        self.wait_slot_inactive()
        stmts = []
        for a in range(lo, hi + 1, BATCH):
            b = min(a + BATCH - 1, hi)
            if kind == "insert":
                stmts.append(f"INSERT INTO public.t (id, payload) SELECT g, 'p' || g FROM generate_series({a}, {b}) g;")
            else:
                stmts.append(f"UPDATE public.t SET payload = 'u' || id, \"updatedAt\" = clock_timestamp() WHERE id BETWEEN {a} AND {b};")
        psql_file(self.url["main"], "\n".join(stmts))
        lsn = psql(self.url["main"], "SELECT pg_current_wal_lsn()")
        # Enable, then wait on main until the slot confirmed everything written: the
        # elapsed time is measured by main's clock, inside one statement.
        secs = float(psql(self.url["main"], "SELECT extract(epoch FROM clock_timestamp())"))
        psql(self.url["cloud"], "ALTER SUBSCRIPTION tfloor ENABLE")
        done = psql(self.url["main"], f"""
            DO $$ BEGIN
              WHILE coalesce((SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'tfloor'), '0/0')
                    < '{lsn}'::pg_lsn LOOP
                PERFORM pg_sleep(0.005);
              END LOOP; END $$;
            SELECT extract(epoch FROM clock_timestamp())""")
        took = float(done.splitlines()[-1]) - secs
        psql(self.url["cloud"], "ALTER SUBSCRIPTION tfloor DISABLE")
        n = int(psql(self.url["cloud"], f"SELECT count(*) FROM public.t WHERE id BETWEEN {lo} AND {hi}"
                                        + (" AND payload LIKE 'u%'" if kind == "update" else "")))
        if n != hi - lo + 1:
            sys.exit(f"{v} {kind}: cloud holds {n} of {hi - lo + 1} rows")
        rate = (hi - lo + 1) / took
        self.results.setdefault((v, kind), []).append(rate)
        print(f"  {v:20} {kind:6} {hi - lo + 1} rows in {took:6.2f} s = {rate:9.0f} rows/s", flush=True)
        return rate

    def run(self) -> None:
        print(f"load average before: {loadavg()}", flush=True)
        for rnd in range(1, ROUNDS + 1):
            print(f"round {rnd}", flush=True)
            for v in VARIANTS:
                self.set_variant(v)
                lo, hi = self.next_id, self.next_id + ROWS - 1
                self.next_id += ROWS
                if v != "c_builtin":
                    self.cycle(v, "insert", lo, hi)
                else:
                    # The C trigger refuses inserts: load its rows with no trigger (one
                    # more sample of `none`).
                    self.set_variant("none")
                    self.cycle("none", "insert", lo, hi)
                    self.set_variant(v)
                self.cycle(v, "update", lo, hi)
        print(f"load average after: {loadavg()}", flush=True)
        print()
        print("| trigger on cloud's table (REPLICA) | inserts rows/s | % of none | updates rows/s | % of none |")
        print("|---|---|---|---|---|")
        base = {k: statistics.mean(self.results[("none", k)]) for k in ("insert", "update")}
        for v in VARIANTS:
            cells = []
            for k in ("insert", "update"):
                r = self.results.get((v, k))
                if r:
                    m = statistics.mean(r)
                    cells += [f"{m:,.0f}", f"{100 * m / base[k]:.0f}%"]
                else:
                    cells += ["-", "-"]
            print(f"| `{v}` | " + " | ".join(cells) + " |")


def main() -> int:
    b = Bench()
    try:
        b.prepare()
        b.run()
    finally:
        b.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
