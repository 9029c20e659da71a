#!/usr/bin/env bash
# Run the whole test suite: brings up the lab (two PostgreSQL clusters, two Garage S3
# servers, plus the fixture clusters the refusal tests need) if it is not running,
# installs moto (the second S3 server the storage tests start), then runs every test.
# Extra arguments go to `cargo test` instead of `--all-targets` (e.g. `scripts/test.sh
# --test replication --test daemon`). The lab's variables select the lab: another
# PostgreSQL version in a second lab beside the first (docs/compatibility.md):
#   PG_VERSION=16.15.0 DUPLEX_LAB_PORT_BASE=56432 DUPLEX_LAB_DIR=/tmp/lab16 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test: cargo is needed (install Rust with rustup)" >&2; exit 1; }

scripts/lab.sh up
scripts/lab.sh up-fixtures
eval "$(scripts/lab.sh env)"
DUPLEX_MOTO_PATH="$(scripts/lab.sh moto-path)"
export DUPLEX_MOTO_PATH
# Local S3 endpoints: a CA bundle meant for real AWS only gets in the way.
unset AWS_CA_BUNDLE || true

if [ "$#" -eq 0 ]; then
  cargo test --all-targets
else
  cargo test "$@"
fi
