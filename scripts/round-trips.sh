#!/usr/bin/env bash
# The round-trip test: every route of every function, its exact database round trips per
# request counted by tools/lambda-bench's proxy, against the table in
# tools/lambda-bench/tests/round_trips.rs (a change that adds a trip fails).
#
#   TEST_DATABASE_URL=postgres://postgres:…@127.0.0.1:PORT/postgres?sslmode=disable \
#   TEST_SMTP_URL=smtp://127.0.0.1:1025 TEST_MAILDEV_URL=http://127.0.0.1:1080 \
#     scripts/round-trips.sh
#
# TEST_DATABASE_URL is a superuser URL: the test makes, migrates and drops its own database.
# The MailDev is where the functions mail (the link tokens are read from its REST API).
# Builds the functions (debug, as `make test` does) and the test; ROUND_TRIPS_BIN_DIR overrides
# where the function binaries are taken from (default target/debug).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

for var in TEST_DATABASE_URL TEST_SMTP_URL TEST_MAILDEV_URL; do
  [[ -n "${!var:-}" ]] || { echo "scripts/round-trips.sh: $var must be set" >&2; exit 2; }
done

step "round trips per request: the function binaries (debug) and the test"
packages=()
for function in "${FUNCTIONS[@]}"; do packages+=(-p "$function"); done
cargo build --quiet "${packages[@]}"
BENCH_FUNCTIONS="${FUNCTIONS[*]}" ROUND_TRIPS_BIN_DIR="${ROUND_TRIPS_BIN_DIR:-$ROOT/target/debug}" \
  cargo test --quiet --manifest-path tools/lambda-bench/Cargo.toml --target-dir "$ROOT/target" \
  --lib --test round_trips -- --nocapture
