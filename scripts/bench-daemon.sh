#!/usr/bin/env bash
# Measure the duplex daemon's own cost on the lab (scripts/lab.sh): resident memory and
# CPU of `duplex run` beside main and beside cloud, idle and while pgbench writes on both
# sides, and replication latency with and without the daemons running.
#
#   scripts/bench-daemon.sh
#
# It builds the release binary, creates the databases duplex_benchd on both lab clusters,
# initialises pgbench's tables on main (`pgbench -i -s 1`), copies their definitions to
# cloud (pg_dump -s), gives pgbench_history a uuid primary key (gen_random_uuid(), so
# rows inserted on both sides never collide), and runs `duplex setup` for cloud, then
# main, replicating the four pgbench tables (replication role duplex_benchd_replicator,
# slots duplex_benchd_m2c on main and duplex_benchd_c2m on cloud). At the end, and after
# a crashed earlier run at the start, it drops everything again: the subscriptions
# (disabled, detached from their slots, dropped), every slot of database duplex_benchd,
# the databases and the role.
#
# For each monitor interval (30 s, the default, and 1 s, the worst case) it starts both
# daemons, waits until both answer 200 on /health/sync, then:
#   idle  IDLE_SECS with nothing writing;
#   load  LOAD_SECS of pgbench on both sides at once (built-in script PGBENCH_SCRIPT,
#         PGBENCH_CLIENTS clients, one thread, rate-limited to PGBENCH_RATE tps per side).
# For each phase and daemon it reports the largest VmRSS seen (sampled every second from
# /proc/PID/status), VmRSS at the end, and CPU time (utime + stime of /proc/PID/stat,
# all threads) divided by the phase's wall time, as a percentage of one core. It also
# reports the CPU of the PostgreSQL backends serving the daemons' own connections
# (application_name duplex_monitor / duplex_api, both clusters together), the pgbench
# tps, the subscriptions' apply errors and conflict counters, and how long after the
# load both sides held the same pgbench_history rows.
#
# Latency: scripts/bench-latency.sh (given-URL mode) against the duplex_benchd databases,
# LAG_ROUNDS times alternately with both daemons stopped and running (1 s interval).
#
# Environment:
#   IDLE_SECS (60)  LOAD_SECS (60)  PGBENCH_RATE (200)  PGBENCH_CLIENTS (2)
#   PGBENCH_SCRIPT (tpcb-like; or simple-update)   LAG_N (1000 inserts per direction)
#   LAG_ROUNDS (2)  INTERVALS ("30 1", monitor intervals in seconds)
#   MAIN_DB_URL, CLOUD_DB_URL, DUPLEX_REPLICATION_PASSWORD, PG_BIN
#                   the lab's; taken from `scripts/lab.sh env` when not set
#   SKIP_BUILD=1    use target/release/duplex as it is
#   KEEP_BENCH_DBS=1  keep duplex_benchd for inspection (the next run drops it first)
set -euo pipefail

NAME=bench-daemon
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IDLE_SECS="${IDLE_SECS:-60}"
LOAD_SECS="${LOAD_SECS:-60}"
PGBENCH_RATE="${PGBENCH_RATE:-200}"
PGBENCH_CLIENTS="${PGBENCH_CLIENTS:-2}"
PGBENCH_SCRIPT="${PGBENCH_SCRIPT:-tpcb-like}"
LAG_N="${LAG_N:-1000}"
LAG_ROUNDS="${LAG_ROUNDS:-2}"
INTERVALS="${INTERVALS:-30 1}"
BENCH_DB=duplex_benchd
BENCH_ROLE=duplex_benchd_replicator
SLOT_M2C=duplex_benchd_m2c # on main, streamed by cloud's subscription
SLOT_C2M=duplex_benchd_c2m # on cloud, streamed by main's subscription
ADDR_MAIN=127.0.0.1:18801
ADDR_CLOUD=127.0.0.1:18802
TABLES=(pgbench_accounts pgbench_branches pgbench_tellers pgbench_history)

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() { printf '%s: error: %s\n' "$NAME" "$*" >&2; exit 1; }

for v in IDLE_SECS LOAD_SECS PGBENCH_RATE PGBENCH_CLIENTS LAG_N LAG_ROUNDS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
[[ -r /proc/self/stat ]] || die "needs Linux (/proc)"

if [[ -z "${MAIN_DB_URL:-}" || -z "${CLOUD_DB_URL:-}" || -z "${DUPLEX_REPLICATION_PASSWORD:-}" ]]; then
  eval "$("$ROOT/scripts/lab.sh" env)"
fi
export PG_BIN DUPLEX_REPLICATION_PASSWORD
PSQL="${PG_BIN:+$PG_BIN/}psql"
PGBENCH="${PG_BIN:+$PG_BIN/}pgbench"
PG_DUMP="${PG_BIN:+$PG_BIN/}pg_dump"
for tool in "$PSQL" "$PGBENCH" "$PG_DUMP" curl getconf; do
  command -v "$tool" >/dev/null || die "$tool not found (set PG_BIN)"
done
CLK_TCK="$(getconf CLK_TCK)"
BIN="$ROOT/target/release/duplex"

# postgres://user:pass@host:port/db -> the same URL for database $2.
with_db() { sed -E "s#^([a-z]+://[^/]*)/[^?]*#\1/$2#" <<<"$1"; }
MAIN_URL="$(with_db "$MAIN_DB_URL" "$BENCH_DB")"
CLOUD_URL="$(with_db "$CLOUD_DB_URL" "$BENCH_DB")"

# psql, quiet, unaligned tuples only, stop on the first error.
sql() {
  local url="$1"
  shift
  PGAPPNAME=duplex_benchd PGOPTIONS="-c client_min_messages=warning" \
    "$PSQL" "$url" -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

WORK="$(mktemp -d)"
declare -A DPID=()    # side -> daemon PID
declare -A LOADPID=() # side -> pgbench PID

# --- clean-up ----------------------------------------------------------------------

# Drop what this script creates; every step tolerates absence.
cleanup_db() {
  local url admin sub
  for url in "$MAIN_URL" "$CLOUD_URL"; do
    admin="$(with_db "$url" postgres)"
    [[ "$(sql "$admin" -c "SELECT count(*) FROM pg_database WHERE datname = '$BENCH_DB'")" == 1 ]] || continue
    for sub in $(sql "$url" -c "SELECT subname FROM pg_subscription
                                WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())"); do
      sql "$url" -c "ALTER SUBSCRIPTION \"$sub\" DISABLE" \
        -c "ALTER SUBSCRIPTION \"$sub\" SET (slot_name = NONE)" \
        -c "DROP SUBSCRIPTION \"$sub\"" || log "warning: could not drop subscription $sub"
    done
  done
  for url in "$MAIN_URL" "$CLOUD_URL"; do
    admin="$(with_db "$url" postgres)"
    # A walsender may take a moment to notice that its subscriber went away.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      sql "$admin" -c "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                       WHERE database = '$BENCH_DB' AND active_pid IS NOT NULL" >/dev/null || true
      sql "$admin" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                       WHERE database = '$BENCH_DB' AND NOT active" >/dev/null 2>&1 || true
      [[ "$(sql "$admin" -c "SELECT count(*) FROM pg_replication_slots WHERE database = '$BENCH_DB'")" == 0 ]] && break
      sleep 0.5
    done
    sql "$admin" -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" ||
      log "warning: could not drop $BENCH_DB"
  done
  for url in "$MAIN_URL" "$CLOUD_URL"; do
    sql "$(with_db "$url" postgres)" -c "DROP ROLE IF EXISTS $BENCH_ROLE" ||
      log "warning: could not drop role $BENCH_ROLE"
  done
}

stop_daemon() {
  local side="$1" pid="${DPID[$1]:-}" rc=0
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "warning: the $side daemon (pid $pid) did not exit within 10 s of SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" || rc=$?
  unset "DPID[$side]"
  ((rc == 0)) || log "warning: the $side daemon (pid $pid) exited with status $rc (log: $WORK/daemon-$side-*.log)"
  return 0
}

on_exit() {
  local rc=$? side
  trap - EXIT
  for side in "${!LOADPID[@]}"; do kill -TERM "${LOADPID[$side]}" 2>/dev/null || true; done
  for side in "${!DPID[@]}"; do stop_daemon "$side"; done
  if [[ "${KEEP_BENCH_DBS:-}" == 1 ]]; then
    log "keeping $BENCH_DB (KEEP_BENCH_DBS=1)"
  else
    log "cleaning up"
    cleanup_db
  fi
  if ((rc == 0)); then rm -rf "$WORK"; else log "logs kept in $WORK"; fi
  exit "$rc"
}

# --- the daemons -----------------------------------------------------------------

cat >"$WORK/duplex.toml" <<EOF
[tables]
include = [$(printf '"%s", ' "${TABLES[@]}" | sed 's/, $//')]

[replication]
user = "$BENCH_ROLE"
EOF

# duplex_cmd SIDE [VAR=VALUE...] ARGS... sets CMD to the command line of duplex for one
# side. It goes through env(1), which execs duplex, so `"${CMD[@]}" &` leaves the
# daemon's own PID in $! (a backgrounded shell function would leave a subshell's).
CMD=()
duplex_cmd() {
  local side="$1"
  shift
  local -a vars=()
  while [[ "${1:-}" == *=* ]]; do vars+=("$1"); shift; done
  if [[ "$side" == main ]]; then
    vars+=(INSTANCE_ROLE=main LOCAL_DB_URL="$MAIN_URL" REMOTE_DB_URL="$CLOUD_URL"
      REPLICATION_SLOT_NAME="$SLOT_C2M" DUPLEX_HTTP_ADDR="$ADDR_MAIN")
  else
    vars+=(INSTANCE_ROLE=cloud LOCAL_DB_URL="$CLOUD_URL" REMOTE_DB_URL="$MAIN_URL"
      REPLICATION_SLOT_NAME="$SLOT_M2C" DUPLEX_HTTP_ADDR="$ADDR_CLOUD")
  fi
  CMD=(env "${vars[@]}" "$BIN" --config "$WORK/duplex.toml" "$@")
}

addr_of() { if [[ "$1" == main ]]; then echo "$ADDR_MAIN"; else echo "$ADDR_CLOUD"; fi; }

start_daemons() { # interval-secs
  local interval="$1" side deadline
  for side in main cloud; do
    ! curl -s -o /dev/null "http://$(addr_of "$side")/" ||
      die "something already listens on $(addr_of "$side") (an earlier run's daemon?)"
  done
  for side in main cloud; do
    duplex_cmd "$side" DUPLEX_MONITOR_INTERVAL_SECS="$interval" \
      DUPLEX_ADMIN_TOKEN="benchd-$RANDOM$RANDOM" run
    "${CMD[@]}" </dev/null >/dev/null 2>"$WORK/daemon-$side-$interval.log" &
    DPID[$side]=$!
  done
  deadline=$((SECONDS + 60))
  for side in main cloud; do
    until curl -fsS -o /dev/null "http://$(addr_of "$side")/health/sync" 2>/dev/null; do
      kill -0 "${DPID[$side]}" 2>/dev/null || {
        tail -n 20 "$WORK/daemon-$side-$interval.log" >&2
        die "the $side daemon exited"
      }
      ((SECONDS < deadline)) || {
        curl -sS "http://$(addr_of "$side")/health/sync" >&2 || true
        die "the $side daemon did not report healthy within 60 s"
      }
      sleep 0.2
    done
  done
  log "daemons up (monitor interval ${interval}s): main pid ${DPID[main]}, cloud pid ${DPID[cloud]}"
}

stop_daemons() { stop_daemon main; stop_daemon cloud; }

# --- sampling --------------------------------------------------------------------

# utime + stime of a process (all its threads), in clock ticks.
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# PIDs of the PostgreSQL backends serving the daemons' own connections, both clusters.
daemon_backends() {
  local url
  for url in "$MAIN_URL" "$CLOUD_URL"; do
    sql "$url" -c "SELECT pid FROM pg_stat_activity
                   WHERE backend_type = 'client backend' AND datname = current_database()
                     AND application_name IN ('duplex_monitor', 'duplex_api', 'duplex_run')"
  done
}
backend_ticks() { # pids...
  local pid total=0 t
  for pid in "$@"; do
    t="$(ticks "$pid" 2>/dev/null)" || continue
    total=$((total + t))
  done
  echo "$total"
}

now() { echo "$EPOCHREALTIME"; }
pct() { awk -v t="$1" -v hz="$CLK_TCK" -v s="$2" 'BEGIN { printf "%.2f", 100 * t / hz / s }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

declare -A R=() # "interval/phase/side/what" -> value

# phase INTERVAL idle|load: sample both daemons for the phase's duration.
phase() {
  local interval="$1" kind="$2" side t0 t1 elapsed b0 b1 rss running
  local -A c0=() max=()
  local pids
  pids="$(daemon_backends | tr '\n' ' ')"
  # shellcheck disable=SC2086
  b0="$(backend_ticks $pids)"
  for side in main cloud; do
    c0[$side]="$(ticks "${DPID[$side]}")"
    max[$side]="$(rss_kb "${DPID[$side]}")"
  done
  t0="$(now)"
  if [[ "$kind" == load ]]; then
    for side in main cloud; do
      local url="$MAIN_URL"
      [[ "$side" == cloud ]] && url="$CLOUD_URL"
      "$PGBENCH" -n -b "$PGBENCH_SCRIPT" -c "$PGBENCH_CLIENTS" -j 1 -T "$LOAD_SECS" \
        -R "$PGBENCH_RATE" "$url" >"$WORK/pgbench-$side-$interval.out" 2>&1 &
      LOADPID[$side]=$!
    done
  fi
  while :; do
    sleep 1
    for side in main cloud; do
      kill -0 "${DPID[$side]}" 2>/dev/null || die "the $side daemon died (log: $WORK/daemon-$side-$interval.log)"
      rss="$(rss_kb "${DPID[$side]}")"
      ((rss > max[$side])) && max[$side]=$rss
    done
    if [[ "$kind" == load ]]; then
      running=0
      for side in main cloud; do kill -0 "${LOADPID[$side]}" 2>/dev/null && running=1; done
      ((running)) || break
    else
      awk -v a="$t0" -v b="$(now)" -v s="$IDLE_SECS" 'BEGIN { exit !(b - a >= s) }' && break
    fi
  done
  t1="$(now)"
  elapsed="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
  # shellcheck disable=SC2086
  b1="$(backend_ticks $pids)"
  for side in main cloud; do
    R[$interval/$kind/$side/cpu]="$(pct $(($(ticks "${DPID[$side]}") - c0[$side])) "$elapsed")"
    R[$interval/$kind/$side/rssmax]="$(mib "${max[$side]}")"
    R[$interval/$kind/$side/rssend]="$(mib "$(rss_kb "${DPID[$side]}")")"
  done
  R[$interval/$kind/backends]="$(pct $((b1 - b0)) "$elapsed")"
  R[$interval/$kind/secs]="$(printf '%.0f' "$elapsed")"
  if [[ "$kind" == load ]]; then
    local rc
    for side in main cloud; do
      rc=0
      wait "${LOADPID[$side]}" || rc=$?
      unset "LOADPID[$side]"
      ((rc == 0)) || {
        tail -n 20 "$WORK/pgbench-$side-$interval.out" >&2
        die "pgbench on $side failed (status $rc)"
      }
      R[$interval/load/$side/tps]="$(sed -nE 's/^tps = ([0-9.]+) .*/\1/p' "$WORK/pgbench-$side-$interval.out" |
        awk '{printf "%.1f", $1}')"
      R[$interval/load/$side/failed]="$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$WORK/pgbench-$side-$interval.out")"
    done
    R[$interval/load/catchup]="$(catch_up)"
  fi
  log "interval ${interval}s, $kind: main ${R[$interval/$kind/main/cpu]}% ${R[$interval/$kind/main/rssmax]} MiB," \
    "cloud ${R[$interval/$kind/cloud/cpu]}% ${R[$interval/$kind/cloud/rssmax]} MiB"
}

# Seconds from the end of the load until both sides hold the same pgbench_history rows.
catch_up() {
  local start=$SECONDS m c
  while :; do
    m="$(sql "$MAIN_URL" -c "SELECT count(*) FROM pgbench_history")"
    c="$(sql "$CLOUD_URL" -c "SELECT count(*) FROM pgbench_history")"
    [[ "$m" == "$c" ]] && { echo "$((SECONDS - start))"; return; }
    ((SECONDS - start < 120)) || { echo "no (main $m rows, cloud $c after 120 s)"; return; }
    sleep 0.5
  done
}

# Apply errors and non-zero conflict counters of this database's subscription.
sub_stats() { # url
  sql "$1" -F ' ' -c "
    SELECT s.subname, s.subenabled, st.apply_error_count, st.sync_error_count,
           coalesce((SELECT string_agg(key || '=' || value, ',') FROM jsonb_each_text(to_jsonb(st))
                     WHERE key LIKE 'confl%' AND value <> '0'), 'none')
    FROM pg_subscription AS s JOIN pg_stat_subscription_stats AS st ON st.subid = s.oid
    WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
}

# --- latency ---------------------------------------------------------------------

declare -a LAG=() # "label direction p50 p99"
latency() { # label
  local out
  out="$(BENCH_N="$LAG_N" "$ROOT/scripts/bench-latency.sh" "$MAIN_URL" "$CLOUD_URL" 2>"$WORK/latency.err")" || {
    cat "$WORK/latency.err" >&2
    die "scripts/bench-latency.sh failed"
  }
  while read -r direction rows p50 _p90 p99 _max; do
    [[ "$rows" == "$LAG_N" ]] || die "latency: $direction measured $rows rows, expected $LAG_N"
    LAG+=("$1 $direction $p50 $p99")
  done < <(grep -E '^(main_to_cloud|cloud_to_main) ' <<<"$out")
  log "latency, $1: $(grep -E '^(main_to_cloud|cloud_to_main) ' <<<"$out" | awk '{printf "%s p50 %s p99 %s; ", $1, $3, $5}')"
}

# --- run -------------------------------------------------------------------------

if [[ "${SKIP_BUILD:-}" != 1 ]]; then
  log "building the release binary"
  (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
fi
[[ -x "$BIN" ]] || die "$BIN is missing"

cleanup_db 2>/dev/null || true
trap on_exit EXIT
trap 'exit 130' INT TERM

log "creating $BENCH_DB on both clusters; pgbench tables on main (scale 1)"
for url in "$MAIN_URL" "$CLOUD_URL"; do
  sql "$(with_db "$url" postgres)" -c "CREATE DATABASE $BENCH_DB"
done
"$PGBENCH" -i -s 1 -q "$MAIN_URL" >"$WORK/pgbench-init.out" 2>&1 ||
  { cat "$WORK/pgbench-init.out" >&2; die "pgbench -i failed"; }
# pgbench_history has no primary key; a uuid generated where the row is inserted never
# collides with the other side's rows (a bigserial/identity would: sequences are per side).
sql "$MAIN_URL" -c "ALTER TABLE public.pgbench_history
                      ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY"
"$PG_DUMP" --schema-only --no-owner --no-privileges "${TABLES[@]/#/--table=public.}" \
  "$MAIN_URL" >"$WORK/schema.sql"
sql "$CLOUD_URL" -f "$WORK/schema.sql" >/dev/null

for side in cloud main; do
  log "duplex setup ($side)"
  duplex_cmd "$side" setup
  "${CMD[@]}" >"$WORK/setup-$side.out" 2>&1 ||
    { cat "$WORK/setup-$side.out" >&2; die "duplex setup failed for $side"; }
done
[[ "$(sql "$CLOUD_URL" -c "SELECT count(*) FROM pgbench_accounts")" == 100000 ]] ||
  die "cloud did not copy main's pgbench_accounts"

for interval in $INTERVALS; do
  start_daemons "$interval"
  log "interval ${interval}s: idle for ${IDLE_SECS}s"
  phase "$interval" idle
  log "interval ${interval}s: pgbench $PGBENCH_SCRIPT on both sides for ${LOAD_SECS}s at ${PGBENCH_RATE} tps each"
  phase "$interval" load
  stop_daemons
done

for ((round = 1; round <= LAG_ROUNDS; round++)); do
  log "latency round $round: daemons stopped"
  latency stopped
  start_daemons 1
  log "latency round $round: daemons running (1 s interval)"
  latency running
  stop_daemons
done

STATS_MAIN="$(sub_stats "$MAIN_URL")"
STATS_CLOUD="$(sub_stats "$CLOUD_URL")"
# Concurrent updates of the same row on both sides overwrite each other crosswise;
# count the rows that ended up different.
differing() { # table key value
  diff <(sql "$MAIN_URL" -c "SELECT $2, $3 FROM $1 ORDER BY $2") \
    <(sql "$CLOUD_URL" -c "SELECT $2, $3 FROM $1 ORDER BY $2") | grep -c '^<' || true
}
DIFF_ACCOUNTS="$(differing pgbench_accounts aid abalance)"
DIFF_TELLERS="$(differing pgbench_tellers tid tbalance)"
DIFF_BRANCHES="$(differing pgbench_branches bid bbalance)"
# Every transaction adds its delta to one branch and logs it in pgbench_history (which
# replicates without conflicts): sum(bbalance) falls short of sum(delta) by the updates
# that a concurrent update from the other side overwrote.
SUM_DELTA="$(sql "$MAIN_URL" -c "SELECT sum(delta) FROM pgbench_history")"
SUM_B_MAIN="$(sql "$MAIN_URL" -c "SELECT sum(bbalance) FROM pgbench_branches")"
SUM_B_CLOUD="$(sql "$CLOUD_URL" -c "SELECT sum(bbalance) FROM pgbench_branches")"

# --- report ----------------------------------------------------------------------

cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
mem="$(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
echo
echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $mem; $(sql "$MAIN_URL" -c "SHOW server_version") on both sides; $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "duplex: $("$BIN" --version 2>/dev/null || echo "$BIN"); idle ${IDLE_SECS}s, load ${LOAD_SECS}s of pgbench -b $PGBENCH_SCRIPT -c $PGBENCH_CLIENTS -j 1 -R $PGBENCH_RATE on each side"
echo
echo "| interval | phase | daemon | RSS max MiB | RSS end MiB | CPU % of a core | pgbench tps (this side) |"
echo "|---|---|---|---|---|---|---|"
for interval in $INTERVALS; do
  for kind in idle load; do
    for side in main cloud; do
      echo "| ${interval} s | $kind (${R[$interval/$kind/secs]} s) | $side | ${R[$interval/$kind/$side/rssmax]} | ${R[$interval/$kind/$side/rssend]} | ${R[$interval/$kind/$side/cpu]} | ${R[$interval/$kind/$side/tps]:--} |"
    done
  done
done
echo
echo "| interval | phase | PostgreSQL backends of the daemons' connections, CPU % of a core (both clusters) |"
echo "|---|---|---|"
for interval in $INTERVALS; do
  for kind in idle load; do
    echo "| ${interval} s | $kind | ${R[$interval/$kind/backends]} |"
  done
done
echo
for interval in $INTERVALS; do
  echo "Load at ${interval} s: failed pgbench transactions main ${R[$interval/load/main/failed]:-?}, cloud ${R[$interval/load/cloud/failed]:-?}; pgbench_history equal on both sides ${R[$interval/load/catchup]} s after the load ended."
done
echo "Subscriptions at the end (name enabled apply_errors sync_errors conflicts):"
echo "  main:  $STATS_MAIN"
echo "  cloud: $STATS_CLOUD"
echo "Rows differing between the sides after the load: pgbench_accounts $DIFF_ACCOUNTS, pgbench_tellers $DIFF_TELLERS, pgbench_branches $DIFF_BRANCHES."
echo "sum(delta) of pgbench_history (both sides): $SUM_DELTA; sum(bbalance): main $SUM_B_MAIN, cloud $SUM_B_CLOUD (the difference is lost updates)."
echo
echo "Latency, scripts/bench-latency.sh -n $LAG_N against $BENCH_DB, $LAG_ROUNDS round(s), idle otherwise:"
echo
echo "| daemons | direction | p50 ms | p99 ms |"
echo "|---|---|---|---|"
for row in "${LAG[@]}"; do
  read -r label direction p50 p99 <<<"$row"
  [[ "$label" == running ]] && label="running (1 s interval)"
  echo "| $label | ${direction/_to_/ → } | $p50 | $p99 |"
done
