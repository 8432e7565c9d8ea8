#!/usr/bin/env bash
# `make dev`: a local Postgres (created, started and migrated on first use), a development
# signing key and DATA_ENCRYPTION_KEY in .env, and the functions served on
# http://localhost:9000 (PORT) with hot reload.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

PORT="${PORT:-9000}"
DB_PORT="${DEV_DB_PORT:-54329}"

ensure_venv
step "local postgres (.local/pg/dev, port $DB_PORT)"
scripts/pg.sh start dev "$DB_PORT"
ensure_dotenv
load_dotenv
# The issuer (and so the discovery document's jwks_uri) is where the gateway answers, unless
# set by hand in the environment or .env.
export JWT_ISSUER="${JWT_ISSUER:-http://localhost:$PORT}"
# An explicitly set DATABASE_URL (say, a Neon branch) wins over the local cluster.
export DATABASE_URL="${DATABASE_URL:-$(scripts/pg.sh url dev "$DB_PORT")}"

step "migrations"
cargo run --quiet -p cli --bin authctl -- migrate
step "building the functions"
cargo build --quiet --bin register --bin login --bin protected --bin refresh --bin logout --bin keys --bin prune

trap 'for pid in ${GATEWAY_PID:-} ${PRUNE_PID:-}; do kill -- "-$pid" 2>/dev/null || true; done' EXIT
step "serving on http://localhost:$PORT: /auth/register, /auth/login, /auth/me, /auth/refresh, /auth/logout, /.well-known/*"
start_gateway "$PORT"
# The template's schedule, locally: the prune function every PRUNE_INTERVAL_SECONDS.
setsid bash -c 'while sleep "$1"; do
  "$2" lambda invoke prune --invoke-address 127.0.0.1 --invoke-port "$3" --data-ascii "{}" >/dev/null 2>&1 || echo "prune: invocation failed" >&2
done' prune "${PRUNE_INTERVAL_SECONDS:-300}" "$VENV/bin/cargo-lambda" "$((PORT + 1))" &
PRUNE_PID=$!
# shellcheck disable=SC2046
"$VENV/bin/cargo-lambda" $(watch_args "$PORT")
