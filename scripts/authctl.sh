#!/usr/bin/env bash
# `make migrate|verify|status`: authctl against DATABASE_URL — from the environment, else from
# .env, else the local dev cluster (started if needed), the same precedence as `make dev`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
load_dotenv
if [[ -z "${DATABASE_URL:-}" ]]; then
  scripts/pg.sh start dev "${DEV_DB_PORT:-54329}" >&2
  DATABASE_URL="$(scripts/pg.sh url dev "${DEV_DB_PORT:-54329}")"
fi
export DATABASE_URL
exec cargo run --quiet -p cli --bin authctl -- "$@"
