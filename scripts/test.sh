#!/usr/bin/env bash
# `make test`: formatting, lints, unit, database and handler tests on a throwaway Postgres, the
# end-to-end suite over HTTP against the real binaries, and the SAM template lint.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

DB_PORT="${TEST_DB_PORT:-54330}"
E2E_PORT="${E2E_PORT:-9200}"

cleanup() {
  # Each server runs in its own process group: this stops the functions cargo lambda started too.
  kill -- "-${WATCH_PID:-0}" "-${GATEWAY_PID:-0}" 2>/dev/null || true
  scripts/pg.sh stop test "$DB_PORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT

ensure_venv

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "throwaway postgres (.local/pg/test, port $DB_PORT)"
scripts/pg.sh destroy test "$DB_PORT" >/dev/null 2>&1 || true
scripts/pg.sh start test "$DB_PORT"
export TEST_DATABASE_URL
TEST_DATABASE_URL="$(scripts/pg.sh url test "$DB_PORT" postgres)"

step "cargo test: unit, database, handler and CLI tests"
cargo test --workspace

step "end-to-end: the real binaries through cargo lambda watch, over HTTP"
scripts/pg.sh psql test "$DB_PORT" -qc 'CREATE DATABASE e2e'
export DATABASE_URL JWT_SECRET API_URL="http://127.0.0.1:$E2E_PORT"
DATABASE_URL="$(scripts/pg.sh url test "$DB_PORT" e2e)"
JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
unset JWT_ISSUER JWT_AUDIENCE ACCESS_TOKEN_TTL_SECONDS PASSWORD_MIN_LENGTH
cargo run --quiet -p cli --bin authctl -- migrate
cargo run --quiet -p cli --bin authctl -- verify
cargo build --quiet --bin register --bin login --bin protected
start_gateway "$E2E_PORT"
# shellcheck disable=SC2046
setsid "$VENV/bin/cargo-lambda" $(watch_args "$E2E_PORT") --ignore-changes >"$ROOT/target/e2e-watch.log" 2>&1 &
WATCH_PID=$!
if ! "$VENV/bin/pytest" -q scripts/e2e; then
  echo "end-to-end tests failed; the functions' log is in target/e2e-watch.log" >&2
  exit 1
fi

step "cfn-lint template.yaml"
"$VENV/bin/cfn-lint" template.yaml
echo "cfn-lint: template.yaml has no findings"
