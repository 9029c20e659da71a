#!/usr/bin/env bash
# Make the TLS files for a duplex pair: a CA of your own and one server certificate per
# PostgreSQL server, signed by it (ECDSA P-256, made with openssl).
#
#   docker/make-certs.sh [DIR]      DIR defaults to docker/tls (what compose.yaml mounts)
#
# Writes into DIR:
#   ca.crt               the CA certificate: every client (duplex, and each PostgreSQL
#                        server for its subscription) verifies the peer with it
#   ca.key               the CA's key (mode 0600): nothing at run time needs it; keep it
#                        offline, it signs every certificate the sides trust
#   main.crt, main.key   main's server certificate and key (key mode 0600)
#   cloud.crt, cloud.key cloud's
#
# Environment:
#   MAIN_SAN    the names main's certificate is valid for, as openssl's subjectAltName:
#               the host the peer puts in its REMOTE_DB_URL (and [replication] peer_host).
#               Default DNS:postgres-main,DNS:localhost,IP:127.0.0.1 (compose.yaml's names)
#   CLOUD_SAN   the same for cloud. Default DNS:postgres-cloud,DNS:localhost,IP:127.0.0.1
#   DAYS        validity of the server certificates in days (default 825)
#   CA_DAYS     validity of the CA in days (default 3650)
#
# Files that exist are kept: a second run makes only what is missing, with the CA that
# is there. To renew a server certificate, delete its .crt and .key and run again; for
# a new CA, start from an empty DIR.
#
# For two real sites, e.g.:
#   MAIN_SAN=DNS:db.site.example.com,IP:198.51.100.20 \
#   CLOUD_SAN=DNS:db.cloud.example.com,IP:203.0.113.10 docker/make-certs.sh /root/duplex-tls
# then copy ca.crt to both hosts and each server's pair to its host (docs/deployment.md).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$here/tls}"
main_san="${MAIN_SAN:-DNS:postgres-main,DNS:localhost,IP:127.0.0.1}"
cloud_san="${CLOUD_SAN:-DNS:postgres-cloud,DNS:localhost,IP:127.0.0.1}"
days="${DAYS:-825}"
ca_days="${CA_DAYS:-3650}"

die() { printf 'make-certs: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'make-certs: %s\n' "$*" >&2; }

command -v openssl >/dev/null || die "openssl is needed (apt-get install openssl)"
for n in "$days" "$ca_days"; do
  case "$n" in ''|*[!0-9]*) die "DAYS and CA_DAYS must be whole numbers of days, got '$n'" ;; esac
done

umask 077
mkdir -p "$dir"
cd "$dir"

if [ ! -f ca.crt ] || [ ! -f ca.key ]; then
  [ ! -f ca.crt ] && [ ! -f ca.key ] \
    || die "$dir has only one of ca.crt and ca.key: restore the other or start from an empty directory"
  log "making the CA in $dir"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -days "$ca_days" -subj "/CN=duplex CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout ca.key -out ca.crt 2>/dev/null
fi

# server NAME SAN: NAME.key and NAME.crt for the names in SAN, signed by the CA.
server() {
  local name="$1" san="$2" ext
  if [ -f "$name.crt" ] && [ -f "$name.key" ]; then
    log "$name.crt exists: kept"
    return 0
  fi
  log "making $name's server certificate for $san"
  ext="$(mktemp)"
  printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
    "$san" >"$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=duplex $name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days "$days" -extfile "$ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$ext"
  openssl verify -CAfile ca.crt "$name.crt" >/dev/null \
    || die "$name.crt does not verify against ca.crt"
}

server main "$main_san"
server cloud "$cloud_san"
rm -f ca.srl

# Certificates are public; keys stay readable by their owner only. PostgreSQL refuses a
# key that others can read; compose.yaml copies each key into its container as the
# server's user with mode 0600.
chmod 0644 ca.crt main.crt cloud.crt
chmod 0600 ca.key main.key cloud.key
log "done: $dir (ca.crt, main.crt/.key, cloud.crt/.key; keep ca.key offline)"
