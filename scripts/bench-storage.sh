#!/usr/bin/env bash
# The storage mirror against rclone, side by side, between the lab's two Garage servers:
# FILES x 1 MiB + BIG x 256 MiB uploaded to cloud's bucket, then copied to main's bucket
# once by `rclone copy --checksum --transfers 3` and once by `duplex storage sync`
# (MAX_CONCURRENT_TRANSFERS=3), each under its own prefix. Prints seconds, MiB/s and peak
# RSS and CPU time (user + system) of both; ROUNDS=N repeats both copies N times, each
# into fresh prefixes, the tools taking turns at going first; with RATE=10MB also a duplex
# run at that MAX_TRANSFER_RATE over the FILES small files.
#
#   scripts/lab.sh up && eval "$(scripts/lab.sh env)" && scripts/bench-storage.sh
#
# Needs rclone (Debian: apt-get install rclone) and GNU time (/usr/bin/time); builds duplex
# in release mode. Uses its own database `duplex_bench_storage` on main and its own
# prefixes, and removes both at the end (set KEEP=1 to keep them). PERF=<file> records the
# duplex run with `perf record -g` into that file (its time then includes perf's cost).
set -euo pipefail
cd "$(dirname "$0")/.."
unset AWS_CA_BUNDLE || true

FILES="${FILES:-1000}"
BIG="${BIG:-4}"
RATE="${RATE:-}"
ROUNDS="${ROUNDS:-1}"
: "${MAIN_STORAGE_URL:?run: eval \"\$(scripts/lab.sh env)\"}"
command -v rclone >/dev/null || { echo "bench-storage: rclone is needed (apt-get install rclone)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench-storage: GNU time is needed (apt-get install time)" >&2; exit 1; }
command -v bc >/dev/null || { echo "bench-storage: bc is needed (apt-get install bc)" >&2; exit 1; }

cargo build --release --quiet
DUPLEX="${CARGO_TARGET_DIR:-$PWD/target}/release/duplex"
PSQL=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1)
run_id="bench-$(date +%s)"
work="$(mktemp -d)"
db=duplex_bench_storage
base_main="${MAIN_DB_URL%/app}"
base_cloud="${CLOUD_DB_URL%/app}"

endpoint_of() { printf '%s' "$1" | sed -E 's#^(https?://[^/]+)/.*#\1#'; }
bucket_of() { printf '%s' "$1" | sed -E 's#^https?://[^/]+/([^/?]+).*#\1#'; }
export RCLONE_CONFIG="$work/rclone.conf"
cat >"$RCLONE_CONFIG" <<EOF
[cloud]
type = s3
provider = Other
endpoint = $(endpoint_of "$CLOUD_STORAGE_URL")
region = garage
access_key_id = $CLOUD_STORAGE_ACCESS_KEY_ID
secret_access_key = $CLOUD_STORAGE_SECRET_ACCESS_KEY
force_path_style = true

[main]
type = s3
provider = Other
endpoint = $(endpoint_of "$MAIN_STORAGE_URL")
region = garage
access_key_id = $MAIN_STORAGE_ACCESS_KEY_ID
secret_access_key = $MAIN_STORAGE_SECRET_ACCESS_KEY
force_path_style = true
EOF
cloud_bucket="$(bucket_of "$CLOUD_STORAGE_URL")"
main_bucket="$(bucket_of "$MAIN_STORAGE_URL")"

cleanup() {
  if [ -z "${KEEP:-}" ]; then
    rclone purge "cloud:$cloud_bucket/$run_id" >/dev/null 2>&1 || true
    for round in $(seq 1 "$ROUNDS"); do
      rclone purge "main:$main_bucket/$run_id-rclone-$round" >/dev/null 2>&1 || true
      rclone purge "main:$main_bucket/$run_id-duplex-$round" >/dev/null 2>&1 || true
    done
    rclone purge "main:$main_bucket/$run_id-rate" >/dev/null 2>&1 || true
    for base in "$base_main" "$base_cloud"; do
      "${PSQL[@]}" "$base/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "generating $FILES x 1 MiB + $BIG x 256 MiB in $work/src"
mkdir -p "$work/src/small" "$work/src/big"
for i in $(seq 1 "$FILES"); do head -c 1048576 /dev/urandom >"$work/src/small/$i.bin"; done
for i in $(seq 1 "$BIG"); do head -c 268435456 /dev/urandom >"$work/src/big/$i.bin"; done
total_mib=$((FILES + BIG * 256))
echo "uploading to cloud:$cloud_bucket/$run_id"
rclone copy --transfers 8 "$work/src" "cloud:$cloud_bucket/$run_id"

# A database on main whose JumpLog rows reference every file.
for base in "$base_main"; do
  "${PSQL[@]}" "$base/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  "${PSQL[@]}" "$base/$db" -f sql/examples/app-schema.sql >/dev/null
done
"${PSQL[@]}" "$base_main/$db" -c "INSERT INTO \"User\" (id, email) VALUES ('u1', 'u1@example.com')"
(cd "$work/src" && find . -type f -name '*.bin' | sed 's#^\./##' | sort | while read -r f; do
  printf '%s\t%s\t%s\n' "$f" "$(sha256sum "$f" | cut -c1-64)" "$(stat -c %s "$f")"
done) >"$work/files.tsv"
"${PSQL[@]}" "$base_main/$db" -c "CREATE TEMP TABLE f (key text, hash text, size bigint)" \
  -c "\\copy f FROM '$work/files.tsv'" \
  -c "INSERT INTO \"JumpLog\" (id, \"userId\", \"jumpNumber\", altitude, \"freefallTime\", \"storageUrl\", hash, \"fileSize\")
      SELECT key, 'u1', row_number() OVER (), 4000, 60, key, hash, size FROM f"
cat >"$work/duplex.toml" <<EOF
[tables]
schema = "public"
exclude = ["DeviceFileIndex", "DeviceCommandQueue"]
[storage.tables."JumpLog"]
key = "storageUrl"
hash = "hash"
size = "fileSize"
priority = "createdAt"
EOF

cat >"$work/report.py" <<'EOF'
import json, sys
r = json.load(open(sys.argv[2]))
if sys.argv[1] == "rate":
    print("         rate %s B/s" % format(round(r["rate_bytes_per_sec"]), ","))
else:
    t = r["bytes"] / r["rate_bytes_per_sec"] if r["rate_bytes_per_sec"] else 0
    print("         transferred %d, failed %d; cycle %.2f s: scan %.2f s, transfers %.2f s"
          % (r["transferred"], r["failed"], r["seconds"], r["scan"]["seconds"], t))
EOF

measure() {
  local label="$1"; shift
  /usr/bin/time -f "%e %M %U %S" -o "$work/time.$label" "$@" >"$work/out.$label" 2>"$work/err.$label" \
    || { cat "$work/err.$label" >&2; echo "$label failed" >&2; exit 1; }
  read -r secs rss_kb user sys <"$work/time.$label"
  printf '%-8s %8.1f s %8.1f MiB/s  peak RSS %6.1f MB  CPU %5.1f s\n' "$label" "$secs" \
    "$(echo "$total_mib / $secs" | bc -l)" "$(echo "$rss_kb / 1000" | bc -l)" "$(echo "$user + $sys" | bc -l)"
}

# The duplex command copying into main's bucket under prefix $1, extra variables after it.
duplex_cmd() {
  local prefix="$1"; shift
  DCMD=(env INSTANCE_ROLE=main LOCAL_DB_URL="$base_main/$db" REMOTE_DB_URL="$base_cloud/postgres"
    LOCAL_STORAGE_URL="$(endpoint_of "$MAIN_STORAGE_URL")/$main_bucket/$prefix?region=garage"
    LOCAL_STORAGE_ACCESS_KEY_ID="$MAIN_STORAGE_ACCESS_KEY_ID"
    LOCAL_STORAGE_SECRET_ACCESS_KEY="$MAIN_STORAGE_SECRET_ACCESS_KEY"
    REMOTE_STORAGE_URL="$(endpoint_of "$CLOUD_STORAGE_URL")/$cloud_bucket/$run_id?region=garage"
    REMOTE_STORAGE_ACCESS_KEY_ID="$CLOUD_STORAGE_ACCESS_KEY_ID"
    REMOTE_STORAGE_SECRET_ACCESS_KEY="$CLOUD_STORAGE_SECRET_ACCESS_KEY"
    MAX_CONCURRENT_TRANSFERS=3 "$@" "$DUPLEX" --config "$work/duplex.toml" storage sync --json)
}

echo "copying $total_mib MiB cloud -> main ($(nproc) cores, $(uname -m)), $ROUNDS round(s), load: $(cut -d' ' -f1-3 /proc/loadavg)"
run_rclone() {
  measure rclone rclone copy --checksum --transfers 3 "cloud:$cloud_bucket/$run_id" "main:$main_bucket/$run_id-rclone-$round"
}
run_duplex() {
  duplex_cmd "$run_id-duplex-$round"
  if [ -n "${PERF:-}" ]; then
    # Profile the duplex run instead of timing it alone: perf record -g into $PERF.
    DCMD=(perf record -q -g -o "$PERF" -- "${DCMD[@]}")
  fi
  measure duplex "${DCMD[@]}"
  # Where duplex's time went, from its own report: the whole cycle, the scan (inventory
  # against the listing, queue updated), and the transfers (first start to last byte read).
  python3 "$work/report.py" cycle "$work/out.duplex"
}
for round in $(seq 1 "$ROUNDS"); do
  # Each round copies into fresh prefixes; odd rounds run rclone first, even rounds duplex
  # first (either tool's writes leave the servers background work the next one meets).
  if [ $((round % 2)) = 1 ]; then run_rclone; run_duplex; else run_duplex; run_rclone; fi
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ -n "$RATE" ]; then
  # The rate limit over the small files only: a fresh prefix, MAX_TRANSFER_RATE set.
  "${PSQL[@]}" "$base_main/$db" -c "DELETE FROM \"JumpLog\" WHERE \"storageUrl\" LIKE 'big/%'"
  total_mib=$FILES
  duplex_cmd "$run_id-rate" MAX_TRANSFER_RATE="$RATE"
  measure rate "${DCMD[@]}"
  python3 "$work/report.py" rate "$work/out.rate"
fi
