#!/usr/bin/env bash
# Make the secrets of docker/compose.yaml's pair, with random values, each file mode 0600:
#
#   docker/make-env.sh
#
#   docker/secrets/main-postgres-password    main's superuser password (the postgres
#   docker/secrets/cloud-postgres-password   image reads it through compose's secrets:)
#   docker/main.env, docker/cloud.env        each controller (`duplex run`, check,
#                                            status): the monitoring role's URLs, the
#                                            setup URLs without a password, the admin token
#   docker/main-setup.env, cloud-setup.env   added for `duplex setup` only (the setup-*
#                                            services): the superuser URLs, this side's and
#                                            the peer's replication password, the
#                                            monitoring role's password
#
# So the controllers never hold a superuser password (docs/security.md). One replication
# password per direction: main-setup.env's own password is cloud-setup.env's peer
# password and the other way round. The monitoring role has one password on both sides
# (setup sets it on both).
#
# duplex reads its secrets from the environment only (no *_FILE variables), so they
# reach its containers through env_file; compose's secrets: carry what the PostgreSQL
# image can read from files. A file that exists is kept (a second run changes nothing):
# delete it to make a new one, and keep the copies consistent (a password is in a secret
# file and in several .env files). Never commit these files (.gitignore lists them).
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
main_rep="$(secret main-replication-password)"
cloud_rep="$(secret cloud-replication-password)"
monitor_pw="$(secret monitor-password)"

# Both containers see the CA at /run/secrets/ca.crt, and so does each PostgreSQL server,
# which makes its subscription's connection with the same sslrootcert path.
tls='sslmode=verify-full&sslrootcert=/run/secrets/ca.crt'

# write FILE: FILE from standard input, unless it exists.
write() {
  if [ -s "$here/$1" ]; then
    cat >/dev/null
    log "$1 exists: kept"
    return 0
  fi
  cat >"$here/$1"
  log "made $1"
}

# env_files ROLE LOCAL_HOST LOCAL_PW REMOTE_HOST REMOTE_PW OWN_REPLICATION PEER_REPLICATION
env_files() {
  write "$1.env" <<EOF
# duplex beside $1 (docker/compose.yaml), every command but setup. Made by
# docker/make-env.sh: secrets, mode 0600, never commit. INSTANCE_ROLE is set in
# compose.yaml.
LOCAL_MONITOR_URL=postgres://duplex_monitor:$monitor_pw@$2:5432/app?$tls
REMOTE_MONITOR_URL=postgres://duplex_monitor:$monitor_pw@$4:5432/app?$tls
# The setup login without its password: the configuration needs both URLs, only setup
# connects with them ($1-setup.env adds the passwords).
LOCAL_DB_URL=postgres://postgres@$2:5432/app?$tls
REMOTE_DB_URL=postgres://postgres@$4:5432/app?$tls
DUPLEX_ADMIN_TOKEN=$(random 32)
EOF
  write "$1-setup.env" <<EOF
# duplex setup beside $1: the setup-$1 service reads $1.env, then this. Made by
# docker/make-env.sh: secrets, mode 0600, never commit.
LOCAL_DB_URL=postgres://postgres:$3@$2:5432/app?$tls
REMOTE_DB_URL=postgres://postgres:$5@$4:5432/app?$tls
DUPLEX_REPLICATION_PASSWORD=$6
DUPLEX_PEER_REPLICATION_PASSWORD=$7
DUPLEX_MONITOR_PASSWORD=$monitor_pw
EOF
}

env_files main postgres-main "$main_pw" postgres-cloud "$cloud_pw" "$main_rep" "$cloud_rep"
env_files cloud postgres-cloud "$cloud_pw" postgres-main "$main_pw" "$cloud_rep" "$main_rep"
chmod 0600 "$here"/secrets/* "$here/main.env" "$here/cloud.env" "$here/main-setup.env" "$here/cloud-setup.env"
log "done: docker/main.env, cloud.env, main-setup.env, cloud-setup.env and secrets/"
