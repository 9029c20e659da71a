#!/usr/bin/env bash
# Run the whole test suite: brings up the lab (two PostgreSQL clusters plus the two
# fixture clusters the refusal tests need) if it is not running, then runs every test.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test replication`).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test: cargo is needed (install Rust with rustup)" >&2; exit 1; }

scripts/lab.sh up
scripts/lab.sh up-fixtures
eval "$(scripts/lab.sh env)"

cargo test --all-targets "$@"
