#!/usr/bin/env bash
# Set up one direction of duplex's bidirectional logical replication, from the instance
# this runs beside. Run it twice: first beside cloud, then beside main.
#
#   INSTANCE_ROLE=cloud LOCAL_DB_URL=$CLOUD_DB_URL REMOTE_DB_URL=$MAIN_DB_URL \
#     DUPLEX_REPLICATION_PASSWORD=... scripts/setup-replication.sh
#   INSTANCE_ROLE=main  LOCAL_DB_URL=$MAIN_DB_URL  REMOTE_DB_URL=$CLOUD_DB_URL \
#     DUPLEX_REPLICATION_PASSWORD=... scripts/setup-replication.sh
#
# Environment:
#   INSTANCE_ROLE                main or cloud: which instance LOCAL_DB_URL is
#   LOCAL_DB_URL                 postgres://user:pass@host:port/db of this instance, as a
#                                superuser (falls back to DATABASE_URL)
#   REMOTE_DB_URL                the same for the other instance; its host, port and
#                                database also go into the local subscription's connection
#                                string, so they must be reachable from the local server
#                                (sslmode in the URL's query is passed on)
#   DUPLEX_REPLICATION_PASSWORD  required; password of the replication role on both sides
#   REPLICATION_SLOT_NAME        slot the local subscription creates on the peer (default
#                                duplex_main_to_cloud for cloud, duplex_cloud_to_main for
#                                main); slots are per cluster, so give each pair its own
#   REPLICATION_USER             replication role (default duplex_replicator)
#   COPY_TIMEOUT_SECS            how long cloud waits for its initial copy (default 300)
#   PG_BIN                       directory of the psql to use (default: psql from PATH)
#
# Both roles: sql/setup-replication-user.sql on the local and the remote database, then
# both publications (sql/create-main-publication.sql on main, sql/create-cloud-
# publication.sql on cloud); where duplex's schema exists, each also keeps
# duplex.replicated_table (the tables duplex compares its configuration with) in step.
# cloud: sql/create-cloud-subscription.sql on the local database (copy_data = true), then
#   wait until its initial copy is done (every table of pg_subscription_rel in state 'r').
# main: check that cloud's subscription exists and finished its copy (else exit 1: run
#   the cloud side first), then sql/create-main-subscription.sql (copy_data = false).
# Finally both check that the local subscription's slot exists on the peer.
#
# Every step is idempotent: a second run changes nothing. Exit codes: 0 done, 1 a step
# failed or a precondition does not hold, 2 bad configuration. Passwords are never
# printed, and never passed on a command line: psql gets them through its environment.
set -euo pipefail

NAME=setup-replication
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SQL_DIR="$ROOT/sql"
PSQL="${PG_BIN:+$PG_BIN/}psql"

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() { printf '%s: error: %s\n' "$NAME" "$*" >&2; exit 1; }

# postgres://user:pass@host:port/db?query -> URL_USER URL_HOST URL_PORT URL_DB URL_SSLMODE
# (the password is not kept). Returns 1 when the URL cannot be used.
parse_url() {
  local rest hostport userinfo
  case "$1" in
    postgres://* | postgresql://*) rest="${1#*://}" ;;
    *) return 1 ;;
  esac
  URL_SSLMODE=""
  if [[ "$rest" == *\?* ]]; then
    local query="${rest#*\?}" param params
    rest="${rest%%\?*}"
    IFS='&' read -ra params <<<"$query"
    for param in "${params[@]}"; do
      [[ "$param" == sslmode=* ]] && URL_SSLMODE="${param#sslmode=}"
    done
  fi
  URL_DB=""
  if [[ "$rest" == */* ]]; then
    URL_DB="${rest#*/}"
    rest="${rest%%/*}"
  fi
  userinfo=""
  hostport="$rest"
  if [[ "$rest" == *@* ]]; then
    userinfo="${rest%@*}"
    hostport="${rest##*@}"
  fi
  URL_USER="${userinfo%%:*}"
  if [[ "$hostport" == \[* ]]; then # [ipv6]:port
    URL_HOST="${hostport#\[}"
    URL_HOST="${URL_HOST%%\]*}"
    URL_PORT="${hostport#*\]}"
    URL_PORT="${URL_PORT#:}"
  else
    URL_HOST="${hostport%%:*}"
    URL_PORT=""
    [[ "$hostport" == *:* ]] && URL_PORT="${hostport##*:}"
  fi
  URL_HOST="$(urldecode "$URL_HOST")"
  URL_DB="$(urldecode "$URL_DB")"
  URL_USER="$(urldecode "$URL_USER")"
  URL_PORT="${URL_PORT:-5432}"
  URL_DB="${URL_DB:-$URL_USER}"
  [[ -n "$URL_HOST" && -n "$URL_DB" && "$URL_PORT" =~ ^[0-9]+$ ]]
}

urldecode() { local s="${1//+/ }"; printf '%b' "${s//%/\\x}"; }

# psql is given the URL without its password, and the password through PGPASSWORD, so
# it never shows in the process list.
url_password() {
  local userinfo
  case "$1" in *@*) userinfo="${1#*://}"; userinfo="${userinfo%%@*}" ;; *) return 0 ;; esac
  [[ "$userinfo" == *:* ]] && urldecode "${userinfo#*:}"
  return 0
}
without_password() { sed -E 's#^([a-z]+://[^:/@]*):[^@/]*@#\1@#' <<<"$1"; }

# The URL with its password replaced, for messages.
redact() { sed -E 's#^([a-z]+://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# psql on a database URL; extra arguments are passed on (-v name=value, -f file).
# The replication password is read from the environment by \getenv. The statements of
# this session carry it (CREATE ROLE, CREATE SUBSCRIPTION): the server must not log
# them, not with log_statement = ddl, not as the statement of an error, not as a slow
# one (superuser-only settings; this script needs a superuser anyway).
QUIET_OPTIONS="-c lock_timeout=30s -c log_statement=none -c log_min_error_statement=panic -c log_min_duration_statement=-1"
psql_on() {
  local url="$1"
  shift
  PGPASSWORD="$(url_password "$url")" PGAPPNAME=duplex_setup PGOPTIONS="$QUIET_OPTIONS" \
    "$PSQL" "$(without_password "$url")" -X -q -v ON_ERROR_STOP=1 \
    -c '\getenv repl_password DUPLEX_REPLICATION_PASSWORD' "$@"
}

# One query, unaligned tuples-only output; SQL on stdin so psql variables (-v) apply.
query() {
  local url="$1" sql="$2"
  shift 2
  PGPASSWORD="$(url_password "$url")" PGAPPNAME=duplex_setup \
    "$PSQL" "$(without_password "$url")" -X -q -A -t -v ON_ERROR_STOP=1 "$@" -f - <<<"$sql"
}

# --- configuration -------------------------------------------------------------------

problems=()
ROLE="${INSTANCE_ROLE:-}"
case "$ROLE" in
  main) PEER=cloud ;;
  cloud) PEER=main ;;
  "") problems+=("INSTANCE_ROLE is not set: use main or cloud") ;;
  *) problems+=("INSTANCE_ROLE='$ROLE' is invalid: use main or cloud") ;;
esac
LOCAL_URL="${LOCAL_DB_URL:-${DATABASE_URL:-}}"
REMOTE_URL="${REMOTE_DB_URL:-}"
[[ -n "$LOCAL_URL" ]] || problems+=("LOCAL_DB_URL (or DATABASE_URL) is not set")
if [[ -z "$REMOTE_URL" ]]; then
  problems+=("REMOTE_DB_URL is not set")
elif ! parse_url "$REMOTE_URL"; then
  problems+=("REMOTE_DB_URL ($(redact "$REMOTE_URL")) is not postgres://user:pass@host:port/db")
fi
[[ -n "${DUPLEX_REPLICATION_PASSWORD:-}" ]] ||
  problems+=("DUPLEX_REPLICATION_PASSWORD is not set: the replication role's password is required")
REPL_USER="${REPLICATION_USER:-duplex_replicator}"
COPY_TIMEOUT="${COPY_TIMEOUT_SECS:-300}"
[[ "$COPY_TIMEOUT" =~ ^[0-9]+$ ]] || problems+=("COPY_TIMEOUT_SECS='$COPY_TIMEOUT' is not a number of seconds")
command -v "$PSQL" >/dev/null || problems+=("psql not found (looked for '$PSQL'; set PG_BIN)")
if ((${#problems[@]})); then
  for problem in "${problems[@]}"; do printf '%s: error: %s\n' "$NAME" "$problem" >&2; done
  exit 2
fi
export DUPLEX_REPLICATION_PASSWORD

if [[ "$ROLE" == cloud ]]; then
  SUBSCRIPTION=duplex_main_to_cloud
  SLOT="${REPLICATION_SLOT_NAME:-duplex_main_to_cloud}"
  MAIN_URL="$REMOTE_URL"
  CLOUD_URL="$LOCAL_URL"
else
  SUBSCRIPTION=duplex_cloud_to_main
  SLOT="${REPLICATION_SLOT_NAME:-duplex_cloud_to_main}"
  MAIN_URL="$LOCAL_URL"
  CLOUD_URL="$REMOTE_URL"
fi
# Quoted for libpq like every other value: a value with spaces cannot add options.
conninfo_quote() { local v="${1//\\/\\\\}"; v="${v//\'/\\\'}"; printf "'%s'" "$v"; }
CONN_EXTRA=""
[[ -n "$URL_SSLMODE" ]] && CONN_EXTRA="sslmode=$(conninfo_quote "$URL_SSLMODE")"

log "$ROLE: local $(redact "$LOCAL_URL"), remote ($PEER) $(redact "$REMOTE_URL"), slot $SLOT"

# --- preflight -----------------------------------------------------------------------

for side in local remote; do
  if [[ "$side" == local ]]; then url="$LOCAL_URL"; else url="$REMOTE_URL"; fi
  info="$(query "$url" "SELECT current_setting('server_version_num')::int >= 160000,
                               current_setting('wal_level')")" ||
    die "cannot connect to the $side database $(redact "$url")"
  IFS='|' read -r version_ok wal_level <<<"$info"
  [[ "$version_ok" == t ]] || die "the $side server is older than PostgreSQL 16"
  [[ "$wal_level" == logical ]] ||
    die "the $side server has wal_level = $wal_level; set wal_level = logical and restart it"
done

# --- both roles: the replication role and both publications --------------------------

for side in local remote; do
  if [[ "$side" == local ]]; then url="$LOCAL_URL"; else url="$REMOTE_URL"; fi
  log "replication role $REPL_USER on the $side database"
  psql_on "$url" -v repl_user="$REPL_USER" -f "$SQL_DIR/setup-replication-user.sql" ||
    die "sql/setup-replication-user.sql failed on the $side database"
done

log "publication duplex_main_to_cloud on main"
psql_on "$MAIN_URL" -f "$SQL_DIR/create-main-publication.sql" ||
  die "sql/create-main-publication.sql failed on main"
log "publication duplex_cloud_to_main on cloud"
psql_on "$CLOUD_URL" -f "$SQL_DIR/create-cloud-publication.sql" ||
  die "sql/create-cloud-publication.sql failed on cloud"

# --- the subscription ----------------------------------------------------------------

# "enabled|tables|tables not ready" of subscription $1 in the database of URL $2,
# empty when it does not exist there.
copy_state() {
  query "$2" "SELECT s.subenabled, count(r.srrelid), count(r.srrelid) FILTER (WHERE r.srsubstate <> 'r')
              FROM pg_subscription AS s
              LEFT JOIN pg_subscription_rel AS r ON r.srsubid = s.oid
              WHERE s.subname = :'sub'
                AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              GROUP BY s.subenabled" -v sub="$1"
}

slot_exists() {
  query "$REMOTE_URL" "SELECT count(*) FROM pg_replication_slots WHERE slot_name = :'slot'" -v slot="$SLOT"
}

# A slot of this name on the peer with no local subscription would make CREATE
# SUBSCRIPTION fail; it may belong to another database or pair, so it is not dropped.
check_no_stale_slot() {
  if [[ -z "$(copy_state "$SUBSCRIPTION" "$LOCAL_URL")" && "$(slot_exists)" != 0 ]]; then
    die "replication slot $SLOT already exists on $PEER but there is no subscription $SUBSCRIPTION here;
  if it is left over from an earlier setup, drop it on $PEER: SELECT pg_drop_replication_slot('$SLOT');
  or choose another REPLICATION_SLOT_NAME"
  fi
}

if [[ "$ROLE" == cloud ]]; then
  check_no_stale_slot
  log "subscription $SUBSCRIPTION on cloud (copies main's rows)"
  psql_on "$LOCAL_URL" -v repl_user="$REPL_USER" -v slot_name="$SLOT" \
    -v main_host="$URL_HOST" -v main_port="$URL_PORT" -v main_db="$URL_DB" \
    -v conn_extra="$CONN_EXTRA" -f "$SQL_DIR/create-cloud-subscription.sql" ||
    die "sql/create-cloud-subscription.sql failed on cloud"

  deadline=$((SECONDS + COPY_TIMEOUT))
  next_report=$((SECONDS + 10))
  while :; do
    state="$(copy_state "$SUBSCRIPTION" "$LOCAL_URL")"
    IFS='|' read -r enabled tables pending <<<"$state"
    [[ -n "$state" ]] || die "subscription $SUBSCRIPTION disappeared from cloud"
    if [[ "$pending" == 0 ]]; then
      log "initial copy done: $tables tables ready"
      break
    fi
    [[ "$enabled" == t ]] ||
      die "subscription $SUBSCRIPTION was disabled during the initial copy (an apply error, e.g. rows already in cloud's tables); see cloud's server log"
    ((SECONDS < deadline)) ||
      die "initial copy not done after ${COPY_TIMEOUT}s: $pending of $tables tables not ready (COPY_TIMEOUT_SECS raises the limit; a re-run waits again)"
    if ((SECONDS >= next_report)); then
      log "initial copy: $pending of $tables tables not ready yet"
      next_report=$((SECONDS + 10))
    fi
    sleep 1
  done
else
  state="$(copy_state duplex_main_to_cloud "$REMOTE_URL")"
  IFS='|' read -r enabled tables pending <<<"$state"
  if [[ -z "$state" ]]; then
    die "cloud has no subscription duplex_main_to_cloud: run setup with INSTANCE_ROLE=cloud first"
  fi
  if [[ "$tables" == 0 || "$pending" != 0 ]]; then
    die "cloud's subscription duplex_main_to_cloud has not finished its initial copy ($pending of $tables tables not ready): run setup with INSTANCE_ROLE=cloud first and let it finish"
  fi
  [[ "$enabled" == t ]] ||
    log "warning: cloud's subscription duplex_main_to_cloud is disabled (an apply error); main -> cloud is stopped"

  check_no_stale_slot
  log "subscription $SUBSCRIPTION on main (no initial copy)"
  psql_on "$LOCAL_URL" -v repl_user="$REPL_USER" -v slot_name="$SLOT" \
    -v cloud_host="$URL_HOST" -v cloud_port="$URL_PORT" -v cloud_db="$URL_DB" \
    -v conn_extra="$CONN_EXTRA" -f "$SQL_DIR/create-main-subscription.sql" ||
    die "sql/create-main-subscription.sql failed on main"
fi

# --- verify --------------------------------------------------------------------------

[[ "$(slot_exists)" == 1 ]] || die "replication slot $SLOT does not exist on $PEER"
slot_db="$(query "$REMOTE_URL" "SELECT database = current_database() FROM pg_replication_slots
                                WHERE slot_name = :'slot'" -v slot="$SLOT")"
[[ "$slot_db" == t ]] || die "replication slot $SLOT on $PEER belongs to another database"
log "done: subscription $SUBSCRIPTION on $ROLE, slot $SLOT on $PEER"
