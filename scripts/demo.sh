#!/usr/bin/env bash
# The duplex demo, on a fresh machine:
#   1. brings up the lab (main on 127.0.0.1:55432, cloud on 127.0.0.1:55433);
#   2. resets database `app` on both and loads the example on-site app, with data on main;
#   3. runs `duplex setup` for cloud (which copies main's rows) and then for main;
#   4. writes on both sides and waits until each write shows on the other;
#   5. shows `duplex status` from both sides;
#   6. starts the controller (`duplex run`) beside each side, prints its API URLs and
#      admin token, stops the cloud cluster and starts it again to show the connection
#      state change, then stops both controllers (by PID).
# Re-running it starts over from step 2 (the lab's `app` database is demo data only).
set -euo pipefail
cd "$(dirname "$0")/.."
unset AWS_CA_BUNDLE || true

# Bold headings on a terminal only: no escape codes in a log file or a pipe.
if [ -t 1 ]; then
  say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  say() { printf '\n== %s\n' "$*"; }
fi

say "bringing up the lab"
scripts/lab.sh up
eval "$(scripts/lab.sh env)"
PSQL=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1)
base_main="${MAIN_DB_URL%/app}"
base_cloud="${CLOUD_DB_URL%/app}"

say "building duplex (the first build takes a few minutes: about 3-4 on two cores)"
cargo build
DUPLEX="$PWD/target/debug/duplex"

say "resetting database app on both sides and loading the example app"
for base in "$base_main" "$base_cloud"; do
  "${PSQL[@]}" "$base/app" -c "DO \$\$ DECLARE s record; BEGIN
      FOR s IN SELECT subname FROM pg_subscription
                WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = 'app') LOOP
        EXECUTE format('ALTER SUBSCRIPTION %I DISABLE', s.subname);
        EXECUTE format('ALTER SUBSCRIPTION %I SET (slot_name = NONE)', s.subname);
        EXECUTE format('DROP SUBSCRIPTION %I', s.subname);
      END LOOP; END \$\$" 2>/dev/null || true
done
for base in "$base_main" "$base_cloud"; do
  "${PSQL[@]}" "$base/postgres" \
    -c "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = 'app' AND active_pid IS NOT NULL" >/dev/null
done
for base in "$base_main" "$base_cloud"; do
  for _ in $(seq 1 50); do
    left=$("${PSQL[@]}" "$base/postgres" -Atc \
      "SELECT count(*) FROM (SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = 'app' AND NOT active) d;
       SELECT count(*) FROM pg_replication_slots WHERE database = 'app'" | tail -n1)
    [ "$left" = 0 ] && break
    sleep 0.2
  done
  "${PSQL[@]}" "$base/postgres" -c "DROP DATABASE IF EXISTS app WITH (FORCE)" -c "CREATE DATABASE app"
  "${PSQL[@]}" "$base/app" -f sql/examples/app-schema.sql
done
"${PSQL[@]}" "$MAIN_DB_URL" -v users=50 -v jumps_per_user=20 -f sql/examples/generate-data.sql >/dev/null
"${PSQL[@]}" "$MAIN_DB_URL" -Atc 'SELECT format($$main has %s users and %s jumps$$, (SELECT count(*) FROM "User"), (SELECT count(*) FROM "JumpLog"))'

config="$PWD/config.example.toml"
main_env=(INSTANCE_ROLE=main LOCAL_DB_URL="$MAIN_DB_URL" REMOTE_DB_URL="$CLOUD_DB_URL")
cloud_env=(INSTANCE_ROLE=cloud LOCAL_DB_URL="$CLOUD_DB_URL" REMOTE_DB_URL="$MAIN_DB_URL")
as_main() { env "${main_env[@]}" "$DUPLEX" --config "$config" "$@"; }
as_cloud() { env "${cloud_env[@]}" "$DUPLEX" --config "$config" "$@"; }

say "duplex setup --dry-run (cloud): the SQL it would run"
# Captured first: `| head` would end duplex with SIGPIPE, a failure under pipefail.
dry_run="$(as_cloud setup --dry-run)"
sed -n '1,12p' <<<"$dry_run"
echo "   ..."

say "duplex setup (cloud): subscribe to main and copy its rows"
as_cloud setup
say "duplex setup (main): subscribe to cloud, no copy back"
as_main setup

"${PSQL[@]}" "$CLOUD_DB_URL" -Atc 'SELECT format($$cloud now has %s users and %s jumps$$, (SELECT count(*) FROM "User"), (SELECT count(*) FROM "JumpLog"))'

wait_for() { # url sql what
  local i
  for i in $(seq 1 100); do
    [ "$("${PSQL[@]}" "$1" -Atc "$2")" = t ] && { echo "   $3"; return 0; }
    sleep 0.1
  done
  echo "demo: $3 did not happen within 10 s" >&2; exit 1
}

say "writing on both sides"
"${PSQL[@]}" "$MAIN_DB_URL" -c "INSERT INTO \"User\" (id, email, name) VALUES ('demo-main', 'on-site@example.com', 'written on main')
  ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name"
"${PSQL[@]}" "$CLOUD_DB_URL" -c "INSERT INTO \"User\" (id, email, name) VALUES ('demo-cloud', 'cloud@example.com', 'written on cloud')
  ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name"
wait_for "$CLOUD_DB_URL" "SELECT EXISTS (SELECT 1 FROM \"User\" WHERE id = 'demo-main')" "main's row arrived on cloud"
wait_for "$MAIN_DB_URL" "SELECT EXISTS (SELECT 1 FROM \"User\" WHERE id = 'demo-cloud')" "cloud's row arrived on main"

say "duplex status (main)"
as_main status
say "duplex status (cloud)"
as_cloud status
say "duplex check (main)"
as_main check

say "starting the controllers (duplex run) beside main and cloud"
# `duplex run` refuses admin tokens shorter than 32 characters.
TOKEN="${DUPLEX_ADMIN_TOKEN:-demo-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
MAIN_API=127.0.0.1:8787
CLOUD_API=127.0.0.1:8788
logs="$(mktemp -d)"
# The daemons' logs live only as long as the demo: shown on failure, then removed.
show_logs() {
  local f
  for f in "$logs"/*.log; do
    [ -f "$f" ] || continue
    echo "--- last lines of $(basename "$f")" >&2
    tail -n 20 "$f" >&2
  done
}
export DUPLEX_ADMIN_TOKEN="$TOKEN" DUPLEX_MONITOR_INTERVAL_SECS=2
# Started through `env`, not a shell function, so that $! is the daemon's own PID.
env "${main_env[@]}" DUPLEX_HTTP_ADDR=$MAIN_API "$DUPLEX" --config "$config" run >"$logs/main.log" 2>&1 &
main_pid=$!
env "${cloud_env[@]}" DUPLEX_HTTP_ADDR=$CLOUD_API "$DUPLEX" --config "$config" run >"$logs/cloud.log" 2>&1 &
cloud_pid=$!
stop_daemons() {
  kill -TERM "$main_pid" "$cloud_pid" 2>/dev/null || true
  wait "$main_pid" "$cloud_pid" 2>/dev/null || true
}
on_exit() {
  local rc=$?
  stop_daemons
  scripts/lab.sh start cloud >/dev/null 2>&1 || true
  [ "$rc" -eq 0 ] || show_logs
  rm -rf "$logs"
}
trap on_exit EXIT

health() { curl -s "http://$1/health/sync" || true; }
state_of() {
  curl -s -H "Authorization: Bearer $TOKEN" "http://$1/api/sync/status" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin).get("connection_state",""))' 2>/dev/null || true
}
wait_state() { # api state seconds
  local i
  for i in $(seq 1 $(( $3 * 10 ))); do
    [ "$(state_of "$1")" = "$2" ] && { echo "   $1 is $2"; return 0; }
    sleep 0.1
  done
  echo "demo: $1 did not reach $2 within $3 s" >&2; exit 1
}
wait_state $MAIN_API CONNECTED 30
wait_state $CLOUD_API CONNECTED 30
cat <<EOF
   main's API:  http://$MAIN_API   (health: /health/sync, metrics: /metrics)
   cloud's API: http://$CLOUD_API
   admin token: $TOKEN
   e.g. curl -H "Authorization: Bearer $TOKEN" http://$MAIN_API/api/sync/status
EOF
echo "   main's health: $(health $MAIN_API)"

say "stopping the cloud cluster: main keeps taking writes, its controller notices"
scripts/lab.sh stop cloud immediate
"${PSQL[@]}" "$MAIN_DB_URL" -c "INSERT INTO \"User\" (id, email, name) VALUES ('written-offline', 'offline@example.com', 'written while cloud was down')
  ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name"
wait_state $MAIN_API DISCONNECTED 10
echo "   main's health: $(health $MAIN_API)"
# Exit 1 while cloud is down (unhealthy): that is the point here.
{ as_main status 2>/dev/null || true; } | sed -n '1,12p'

say "starting the cloud cluster again"
scripts/lab.sh start cloud
# Skip the rest of the reconnect backoff (30 s at first) instead of waiting for it.
as_main trigger >/dev/null
wait_state $MAIN_API CONNECTED 60
wait_for "$CLOUD_DB_URL" "SELECT EXISTS (SELECT 1 FROM \"User\" WHERE id = 'written-offline')" "the row written while cloud was down arrived on cloud"
echo "   main's health: $(health $MAIN_API)"
"${PSQL[@]}" "$MAIN_DB_URL" -c "SELECT created_at::time(0) AS at, status, error_message FROM duplex.sync_log WHERE sync_type = 'connection' ORDER BY id"

say "stopping the controllers"
stop_daemons
trap - EXIT
rm -rf "$logs"

cat <<EOF

The lab keeps running. Try it yourself (\`cargo install --path .\` puts duplex on PATH):
  eval "\$(scripts/lab.sh env)"
  INSTANCE_ROLE=main LOCAL_DB_URL="\$MAIN_DB_URL" REMOTE_DB_URL="\$CLOUD_DB_URL" $DUPLEX --config config.example.toml status
  DUPLEX_ADMIN_TOKEN=\$(openssl rand -hex 32) INSTANCE_ROLE=main LOCAL_DB_URL="\$MAIN_DB_URL" REMOTE_DB_URL="\$CLOUD_DB_URL" $DUPLEX --config config.example.toml run
Stop it with scripts/lab.sh down (data kept) or scripts/lab.sh reset (data wiped).
EOF
