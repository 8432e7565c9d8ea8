#!/usr/bin/env bash
# `make dev`: a local Postgres (created, started and migrated on first use), a development
# signing key and DATA_ENCRYPTION_KEY in .env, a local mail server (MailDev: SMTP on
# 127.0.0.1:1025, inbox on http://127.0.0.1:1080) that SMTP_URL points at, and the functions
# served on http://localhost:9000 (PORT) with hot reload, the mailer invoked every
# MAILER_INTERVAL_SECONDS as its schedule does in the cloud.
#
# MAILDEV=0 starts no mail server and leaves SMTP_URL as set by hand (unset: mail off).
# SMTP_URL set by hand (environment or .env) wins over MailDev; MailDev still starts.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

PORT="${PORT:-9000}"
DB_PORT="${DEV_DB_PORT:-54329}"
MAILDEV="${MAILDEV:-1}"
MAILDEV_SMTP_PORT="${MAILDEV_SMTP_PORT:-1025}"
MAILDEV_WEB_PORT="${MAILDEV_WEB_PORT:-1080}"
MAILER_INTERVAL_SECONDS="${MAILER_INTERVAL_SECONDS:-10}"
case "$MAILDEV" in
  0 | 1) ;;
  *) echo "MAILDEV must be 1 (start the local mail server, the default) or 0 (none), got '$MAILDEV'" >&2; exit 2 ;;
esac
if ! [[ "$MAILER_INTERVAL_SECONDS" =~ ^[0-9]+$ ]] || ((MAILER_INTERVAL_SECONDS < 1)); then
  echo "MAILER_INTERVAL_SECONDS must be a whole number of seconds, 1 or more, got '$MAILER_INTERVAL_SECONDS'" >&2
  exit 2
fi

STOP_MAILDEV=0
cleanup() {
  for pid in ${GATEWAY_PID:-} ${PRUNE_PID:-} ${MAILER_PID:-}; do kill -- "-$pid" 2>/dev/null || true; done
  # Only a MailDev this run started: one started by `make maildev` keeps running.
  if ((STOP_MAILDEV)); then
    scripts/maildev.sh stop dev "$MAILDEV_SMTP_PORT" "$MAILDEV_WEB_PORT" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

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

MAIL_NOTE="mail off (SMTP_URL unset): no verification or reset mail; see MAILDEV=0 in README.md"
if ((MAILDEV)); then
  step "local mail server (MailDev: SMTP 127.0.0.1:$MAILDEV_SMTP_PORT, inbox http://127.0.0.1:$MAILDEV_WEB_PORT)"
  scripts/maildev.sh status dev "$MAILDEV_SMTP_PORT" "$MAILDEV_WEB_PORT" >/dev/null 2>&1 || STOP_MAILDEV=1
  scripts/maildev.sh start dev "$MAILDEV_SMTP_PORT" "$MAILDEV_WEB_PORT"
  if [[ -z "${SMTP_URL:-}" ]]; then
    export SMTP_URL
    SMTP_URL="$(scripts/maildev.sh url dev "$MAILDEV_SMTP_PORT" "$MAILDEV_WEB_PORT")"
    MAIL_NOTE="mail to MailDev: the inbox is http://127.0.0.1:$MAILDEV_WEB_PORT"
  else
    MAIL_NOTE="mail to the SMTP_URL set by hand, not to MailDev (http://127.0.0.1:$MAILDEV_WEB_PORT stays empty)"
  fi
elif [[ -n "${SMTP_URL:-}" ]]; then
  MAIL_NOTE="mail to the SMTP_URL set by hand (MAILDEV=0: no local mail server)"
fi

step "migrations"
cargo run --quiet -p cli --bin authctl -- migrate
step "building the functions: ${FUNCTIONS[*]}"
cargo build --quiet "${FUNCTION_BINS[@]}"

ROUTES="$("$VENV/bin/python" - <<'PY'
import tomllib
router = tomllib.load(open("Cargo.toml", "rb"))["workspace"]["metadata"]["lambda"]["watch"]["router"]
print(", ".join(sorted(path for path in router if path != "$default")))
PY
)"
step "serving the API on http://localhost:$PORT"
echo "the pages (sign up, sign in, your account): http://localhost:$PORT/"
echo "routes: $ROUTES"
echo "the contract (OpenAPI 3.1): http://localhost:$PORT/openapi.json"
echo "$MAIL_NOTE"
start_gateway "$PORT"
# The template's schedules, locally: prune every PRUNE_INTERVAL_SECONDS, the mailer (which
# delivers what a request could not) every MAILER_INTERVAL_SECONDS. Without mail nothing is
# queued, so no mailer runs.
schedule() {  # schedule FUNCTION SECONDS: invoke FUNCTION every SECONDS, in its own process group
  # cargo lambda watch takes a while to listen: the first run waits for it rather than fail.
  # shellcheck disable=SC2016 # the inner script's own positional parameters
  setsid bash -c 'until (exec 3<>"/dev/tcp/127.0.0.1/$4") 2>/dev/null; do sleep 1; done
  while sleep "$2"; do
    "$3" lambda invoke "$1" --invoke-address 127.0.0.1 --invoke-port "$4" --data-ascii "{}" >/dev/null 2>&1 ||
      echo "$1: invocation failed" >&2
  done' schedule "$1" "$2" "$VENV/bin/cargo-lambda" "$((PORT + 1))" &
}
schedule prune "${PRUNE_INTERVAL_SECONDS:-300}"
PRUNE_PID=$!
if has_function mailer && [[ -n "${SMTP_URL:-}" ]]; then
  schedule mailer "$MAILER_INTERVAL_SECONDS"
  MAILER_PID=$!
  echo "the mailer runs every ${MAILER_INTERVAL_SECONDS}s (MAILER_INTERVAL_SECONDS)"
fi
# shellcheck disable=SC2046
"$VENV/bin/cargo-lambda" $(watch_args "$PORT")
