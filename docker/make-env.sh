#!/usr/bin/env bash
# Make the secrets of docker/compose.yaml's pair, with random values, each file mode 0600:
#
#   docker/make-env.sh
#
#   docker/secrets/main-postgres-password    main's superuser password (the postgres
#   docker/secrets/cloud-postgres-password   image reads it through compose's secrets:)
#   docker/main.env                          duplex beside main: both database URLs (with
#   docker/cloud.env                         those passwords), the replication password,
#                                            its own admin token
#
# duplex reads its secrets from the environment only (no *_FILE variables), so they
# reach its containers through env_file; compose's secrets: carry what the PostgreSQL
# image can read from files. A file that exists is kept (a second run changes nothing):
# delete it to make a new one, and keep the copies consistent (a password is in the
# secret file and in both .env files). Never commit these files (.gitignore lists them).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
log() { printf 'make-env: %s\n' "$*" >&2; }
die() { printf 'make-env: error: %s\n' "$*" >&2; exit 1; }
command -v openssl >/dev/null || die "openssl is needed (apt-get install openssl)"

umask 077
mkdir -p "$here/secrets"

# Hex: nothing in a password needs escaping in a URL or an env file.
random() { openssl rand -hex "$1"; }

# secret FILE: the file's value, made first when missing.
secret() {
  local file="$here/secrets/$1"
  if [ ! -s "$file" ]; then
    random 24 >"$file"
    log "made secrets/$1"
  fi
  tr -d '\n' <"$file"
}

main_pw="$(secret main-postgres-password)"
cloud_pw="$(secret cloud-postgres-password)"
# One password for both directions: duplex uses DUPLEX_REPLICATION_PASSWORD on both
# sides (docs/security.md).
replication_pw="$(secret replication-password)"

# Both containers see the CA at /run/secrets/ca.crt, and so does each PostgreSQL server,
# which makes its subscription's connection with the same sslrootcert path.
tls='sslmode=verify-full&sslrootcert=/run/secrets/ca.crt'

# env_file ROLE LOCAL_HOST LOCAL_PW REMOTE_HOST REMOTE_PW
env_file() {
  local role="$1" file="$here/$1.env"
  if [ -s "$file" ]; then
    log "$1.env exists: kept"
    return 0
  fi
  cat >"$file" <<EOF
# duplex beside $role (docker/compose.yaml). Made by docker/make-env.sh: secrets, mode
# 0600, never commit. INSTANCE_ROLE and DUPLEX_HTTP_ADDR are set in compose.yaml.
LOCAL_DB_URL=postgres://postgres:$3@$2:5432/app?$tls
REMOTE_DB_URL=postgres://postgres:$5@$4:5432/app?$tls
DUPLEX_REPLICATION_PASSWORD=$replication_pw
DUPLEX_ADMIN_TOKEN=$(random 32)
EOF
  log "made $1.env"
}

env_file main postgres-main "$main_pw" postgres-cloud "$cloud_pw"
env_file cloud postgres-cloud "$cloud_pw" postgres-main "$main_pw"
chmod 0600 "$here"/secrets/* "$here/main.env" "$here/cloud.env"
log "done: docker/main.env, docker/cloud.env, docker/secrets/"
