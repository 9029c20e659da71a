#!/usr/bin/env bash
# Measure duplex's replication latency: how long a row inserted on one side takes to be
# applied on the other, in both directions.
#
#   scripts/bench-latency.sh [-n N] [MAIN_DB_URL CLOUD_DB_URL]
#
# With no URLs it benchmarks the lab (scripts/lab.sh): it creates the databases
# duplex_bench on both clusters, loads sql/examples/app-schema.sql and a little data
# (sql/examples/generate-data.sql), sets up replication with scripts/setup-replication.sh
# (cloud first, then main; role duplex_bench_replicator, slots duplex_bench_main_to_cloud
# and duplex_bench_cloud_to_main), measures, and at the end drops everything again:
# subscriptions, then any slot left, then the databases and the role. It also cleans up
# what a crashed earlier run left.
#
# With two URLs it uses those databases, where bidirectional replication of the example
# app must already be set up (subscription duplex_main_to_cloud on cloud and
# duplex_cloud_to_main on main, as scripts/setup-replication.sh makes them). It adds the
# table public.bench_probe to both publications, refreshes both subscriptions
# (copy_data = false), and drops the table again at the end.
#
# Options and environment:
#   -n N                  inserts per direction (default 1000; BENCH_N)
#   BENCH_PAUSE_SECS      pause between two inserts (default 0.005), so that what is
#                         measured is latency, not a queue of back-to-back commits
#   BENCH_TIMEOUT_SECS    how long to wait for the rows of one direction (default 120)
#   KEEP_BENCH_DBS=1      lab mode: keep duplex_bench for inspection (drop it by running
#                         the script again, which starts with a clean-up)
#   PG_BIN                directory of the psql to use (default: psql from PATH)
#   MAIN_DB_URL, CLOUD_DB_URL, DUPLEX_REPLICATION_PASSWORD
#                         lab mode: the lab's clusters and password; taken from
#                         `scripts/lab.sh env` when not set
#
# Method. bench_probe(side, id, sent_at, applied_at) has on both sides a BEFORE INSERT
# trigger, enabled with ENABLE ALWAYS so that it also fires in the apply worker (which
# runs with session_replication_role = replica), setting applied_at = clock_timestamp().
# sent_at defaults to clock_timestamp() on the side that inserts. So on the receiving
# side applied_at - sent_at is the time from the INSERT on the sender to the apply on
# the receiver: commit, WAL decoding, transfer, apply (the apply transaction's own commit
# follows immediately). Both clocks must agree: true on the lab, where both clusters
# share one machine; on two machines the clock offset adds to the result.
# One psql session sends N single-row autocommit INSERTs with a pause between them,
# after 20 warm-up rows that are not counted; the script then polls the receiver until
# all N rows arrived (with a deadline) and prints p50, p90, p99 and max with
# percentile_cont. The primary key is (side, id): sequences are not replicated, so both
# sides' bigserial produce the same numbers.
set -euo pipefail

NAME=bench-latency
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PSQL="${PG_BIN:+$PG_BIN/}psql"
N="${BENCH_N:-1000}"
PAUSE="${BENCH_PAUSE_SECS:-0.005}"
TIMEOUT="${BENCH_TIMEOUT_SECS:-120}"
WARMUP=20
BENCH_DB=duplex_bench
BENCH_ROLE=duplex_bench_replicator
SLOT_M2C=duplex_bench_main_to_cloud
SLOT_C2M=duplex_bench_cloud_to_main

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() { printf '%s: error: %s\n' "$NAME" "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

while getopts 'n:h' opt; do
  case "$opt" in
    n) N="$OPTARG" ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number (got '$N')"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "BENCH_TIMEOUT_SECS must be a number of seconds"
command -v "$PSQL" >/dev/null || die "psql not found (looked for '$PSQL'; set PG_BIN)"

# psql, quiet, unaligned tuples only, stop on the first error; SQL on stdin or -c/-f.
sql() {
  local url="$1"
  shift
  PGAPPNAME=duplex_bench "$PSQL" "$url" -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

# postgres://user:pass@host:port/db -> the same URL for database $2.
with_db() { sed -E "s#^([a-z]+://[^/]*)/[^?]*#\1/$2#" <<<"$1"; }

case $# in
  0) MODE=lab ;;
  2) MODE=given MAIN_URL="$1" CLOUD_URL="$2" ;;
  *) usage ;;
esac

# --- lab mode: own databases ---------------------------------------------------------

# Drop what lab mode creates, in dependency order; every step tolerates absence.
cleanup_lab() {
  local url
  local -x PGOPTIONS="-c client_min_messages=warning"
  for url in "$MAIN_URL" "$CLOUD_URL"; do
    # Dropping a subscription also drops its slot on the peer.
    if [[ "$(sql "$(with_db "$url" postgres)" \
      -c "SELECT count(*) FROM pg_database WHERE datname = '$BENCH_DB'")" == 1 ]]; then
      sql "$url" -c "DROP SUBSCRIPTION IF EXISTS duplex_main_to_cloud" \
        -c "DROP SUBSCRIPTION IF EXISTS duplex_cloud_to_main" ||
        log "warning: could not drop a subscription in $BENCH_DB"
    fi
  done
  for url in "$MAIN_URL" "$CLOUD_URL"; do
    url="$(with_db "$url" postgres)"
    sql "$url" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                   WHERE slot_name IN ('$SLOT_M2C', '$SLOT_C2M') AND NOT active" >/dev/null ||
      log "warning: could not drop a leftover slot"
    sql "$url" -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" \
      -c "DROP ROLE IF EXISTS $BENCH_ROLE" || log "warning: could not drop $BENCH_DB or $BENCH_ROLE"
  done
}

if [[ "$MODE" == lab ]]; then
  if [[ -z "${MAIN_DB_URL:-}" || -z "${CLOUD_DB_URL:-}" || -z "${DUPLEX_REPLICATION_PASSWORD:-}" ]]; then
    eval "$("$ROOT/scripts/lab.sh" env)"
    PSQL="${PG_BIN:+$PG_BIN/}psql"
  fi
  MAIN_URL="$(with_db "$MAIN_DB_URL" "$BENCH_DB")"
  CLOUD_URL="$(with_db "$CLOUD_DB_URL" "$BENCH_DB")"
  export DUPLEX_REPLICATION_PASSWORD PG_BIN

  cleanup_lab 2>/dev/null
  if [[ "${KEEP_BENCH_DBS:-}" != 1 ]]; then
    trap 'log "cleaning up"; cleanup_lab' EXIT
  fi
  log "creating $BENCH_DB on both lab clusters"
  for url in "$MAIN_URL" "$CLOUD_URL"; do
    sql "$(with_db "$url" postgres)" -c "CREATE DATABASE $BENCH_DB"
    sql "$url" -f "$ROOT/sql/examples/app-schema.sql"
  done
  sql "$MAIN_URL" -v users=100 -v jumps_per_user=20 \
    -f "$ROOT/sql/examples/generate-data.sql" >/dev/null
fi

# --- the probe table -----------------------------------------------------------------

PROBE_DDL="
CREATE TABLE IF NOT EXISTS public.bench_probe (
    side       text        NOT NULL,
    id         bigserial   NOT NULL,
    run        text        NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    applied_at timestamptz,
    PRIMARY KEY (side, id)
);
CREATE OR REPLACE FUNCTION public.bench_probe_applied_at() RETURNS trigger
LANGUAGE plpgsql AS \$\$
BEGIN
    NEW.applied_at := clock_timestamp();
    RETURN NEW;
END
\$\$;
CREATE OR REPLACE TRIGGER bench_probe_applied_at BEFORE INSERT ON public.bench_probe
    FOR EACH ROW EXECUTE FUNCTION public.bench_probe_applied_at();
ALTER TABLE public.bench_probe ENABLE ALWAYS TRIGGER bench_probe_applied_at;
"
for url in "$MAIN_URL" "$CLOUD_URL"; do
  sql "$url" -c "SET client_min_messages = warning" -c "$PROBE_DDL"
done

if [[ "$MODE" == lab ]]; then
  # The probe table is in schema public, so the publications include it.
  for role in cloud main; do
    if [[ "$role" == cloud ]]; then
      local_url="$CLOUD_URL" remote_url="$MAIN_URL" slot="$SLOT_M2C"
    else
      local_url="$MAIN_URL" remote_url="$CLOUD_URL" slot="$SLOT_C2M"
    fi
    log "setting up replication: INSTANCE_ROLE=$role"
    INSTANCE_ROLE="$role" LOCAL_DB_URL="$local_url" REMOTE_DB_URL="$remote_url" \
      REPLICATION_SLOT_NAME="$slot" REPLICATION_USER="$BENCH_ROLE" \
      "$ROOT/scripts/setup-replication.sh" 2>/dev/null ||
      die "scripts/setup-replication.sh failed for INSTANCE_ROLE=$role (run it by hand to see why)"
  done
else
  # Dropping the table also takes it out of the publication (publisher side) and out of
  # pg_subscription_rel (subscriber side).
  drop_probe() {
    local url
    log "dropping bench_probe"
    for url in "$MAIN_URL" "$CLOUD_URL"; do
      sql "$url" -c "DROP TABLE IF EXISTS public.bench_probe" \
        -c "DROP FUNCTION IF EXISTS public.bench_probe_applied_at()" || true
    done
  }
  trap drop_probe EXIT
  add_and_refresh() { # publisher-url publication subscriber-url subscription
    sql "$1" -c "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_publication_tables
                       WHERE pubname = '$2' AND schemaname = 'public' AND tablename = 'bench_probe')
        THEN ALTER PUBLICATION $2 ADD TABLE public.bench_probe; END IF; END \$\$"
    sql "$3" -c "ALTER SUBSCRIPTION $4 REFRESH PUBLICATION WITH (copy_data = false)"
  }
  add_and_refresh "$MAIN_URL" duplex_main_to_cloud "$CLOUD_URL" duplex_main_to_cloud
  add_and_refresh "$CLOUD_URL" duplex_cloud_to_main "$MAIN_URL" duplex_cloud_to_main
fi

# Both subscriptions must be enabled and know bench_probe as ready.
for pair in "$CLOUD_URL duplex_main_to_cloud" "$MAIN_URL duplex_cloud_to_main"; do
  read -r url sub <<<"$pair"
  ok="$(sql "$url" -c "SELECT s.subenabled AND r.srsubstate = 'r'
                       FROM pg_subscription AS s
                       JOIN pg_subscription_rel AS r ON r.srsubid = s.oid
                       WHERE s.subname = '$sub' AND r.srrelid = 'public.bench_probe'::regclass
                         AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())")"
  [[ "$ok" == t ]] || die "subscription $sub is missing, disabled, or does not replicate bench_probe"
done

# --- measure -------------------------------------------------------------------------

# Send $3 rows from the side $1 (URL $2), one autocommit INSERT each, paced.
send() {
  local side="$1" url="$2" count="$3" run="$4"
  {
    printf "SET synchronous_commit = on;\n"
    for ((i = 0; i < count; i++)); do
      printf "INSERT INTO public.bench_probe (side, run) VALUES ('%s', '%s');\n" "$side" "$run"
      printf "SELECT pg_sleep(%s);\n" "$PAUSE"
    done
  } | sql "$url" -o /dev/null -f -
}

# Wait until $3 rows of run $4 from side $1 are on the receiver $2.
wait_for() {
  local side="$1" url="$2" count="$3" run="$4" deadline=$((SECONDS + TIMEOUT)) have
  while :; do
    have="$(sql "$url" -c "SELECT count(*) FROM public.bench_probe WHERE side = '$side' AND run = '$run'")"
    [[ "$have" -ge "$count" ]] && return 0
    ((SECONDS < deadline)) || die "only $have of $count rows from $side arrived within ${TIMEOUT}s"
    sleep 0.2
  done
}

# Sets RESULT to "rows p50 p90 p99 max" (milliseconds) for one direction.
measure() { # from-side from-url to-url
  local from="$1" from_url="$2" to_url="$3" run
  run="$(date +%s%N)"
  send "$from" "$from_url" "$WARMUP" "warmup-$run"
  wait_for "$from" "$to_url" "$WARMUP" "warmup-$run"
  log "$from -> $([[ $from == main ]] && echo cloud || echo main): $N inserts, ${PAUSE}s apart"
  send "$from" "$from_url" "$N" "$run"
  wait_for "$from" "$to_url" "$N" "$run"
  RESULT="$(sql "$to_url" -F ' ' -c "
    SELECT count(*),
           to_char(percentile_cont(0.50) WITHIN GROUP (ORDER BY ms), 'FM9990.00'),
           to_char(percentile_cont(0.90) WITHIN GROUP (ORDER BY ms), 'FM9990.00'),
           to_char(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), 'FM9990.00'),
           to_char(max(ms), 'FM9990.00')
    FROM (SELECT extract(epoch FROM applied_at - sent_at) * 1000 AS ms
          FROM public.bench_probe WHERE side = '$from' AND run = '$run') AS t")"
}

cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)"
printf 'machine:    %s CPUs, %s\n' "$(nproc)" "${cpu:-unknown CPU}"
printf 'main:       %s\n' "$(sql "$MAIN_URL" -c "SELECT version()")"
printf 'cloud:      %s\n' "$(sql "$CLOUD_URL" -c "SELECT version()")"
printf 'inserts:    %s per direction, single-row autocommit, %ss apart, after %s warm-up rows\n' \
  "$N" "$PAUSE" "$WARMUP"
printf '\n%-15s %6s %9s %9s %9s %9s\n' direction rows p50_ms p90_ms p99_ms max_ms
for direction in main_to_cloud cloud_to_main; do
  if [[ "$direction" == main_to_cloud ]]; then
    measure main "$MAIN_URL" "$CLOUD_URL"
  else
    measure cloud "$CLOUD_URL" "$MAIN_URL"
  fi
  read -r rows p50 p90 p99 max <<<"$RESULT"
  printf '%-15s %6s %9s %9s %9s %9s\n' "$direction" "$rows" "$p50" "$p90" "$p99" "$max"
done
