#!/usr/bin/env bash
# `make test`: formatting, lints, unit, database, handler and fault tests on throwaway Postgres
# clusters (one plain, one with TLS), the database and end-to-end suites a second time through
# a transaction-mode PgBouncer (as Neon's -pooler endpoint), the contract, the pages in headless
# Chromium, and the SAM template lint. Mail goes to throwaway MailDev servers: one for the cargo
# tests, one for each API the end-to-end, contract and browser runs talk to.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

DB_PORT="${TEST_DB_PORT:-54330}"       # plain cluster "test"; its PgBouncer on DB_PORT+3
FAULT_PORT=$((DB_PORT + 1))           # TLS cluster "faults" the fault tests restart and stop; its PgBouncer on +2
E2E_PORT="${E2E_PORT:-9200}"          # e2e API; the pass through PgBouncer uses E2E_PORT+10, the
                                      # contract's APIs E2E_PORT+20 (accounts) and +30 (stranger),
                                      # the browser tests' E2E_PORT+40
# MailDev "test-E2E_PORT" (cargo tests): SMTP E2E_PORT+25, web +80; an e2e pass on port P:
# "e2e-P" on SMTP P+26, web P+81. Named and numbered after E2E_PORT, so runs with another
# E2E_PORT do not collide.
TEST_MAILDEV=("test-$E2E_PORT" $((E2E_PORT + 25)) $((E2E_PORT + 80)))
MAILDEVS=""                           # the MailDevs started, "NAME SMTP WEB;" each
LOG="$ROOT/target/test-output.log"

cleanup() {
  # Each server (and the background contract run) has its own process group: this stops the
  # functions cargo lambda started, and schemathesis, too.
  for pid in ${SERVER_PIDS:-} ${CONTRACT_PIDS:-}; do kill -- "-$pid" 2>/dev/null || true; done
  local maildev
  while IFS= read -r -d ';' maildev; do
    # shellcheck disable=SC2086
    [[ -z "$maildev" ]] || scripts/maildev.sh stop $maildev >/dev/null 2>&1 || true
  done <<<"$MAILDEVS"
  scripts/pgbouncer.sh stop testbouncer $((DB_PORT + 3)) >/dev/null 2>&1 || true
  scripts/pgbouncer.sh stop faultbouncer $((DB_PORT + 2)) >/dev/null 2>&1 || true
  scripts/pg.sh stop test "$DB_PORT" >/dev/null 2>&1 || true
  scripts/pg.sh stop faults "$FAULT_PORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT
mkdir -p target && : >"$LOG"

ensure_venv
ensure_chromium

# tools/lambda-bench is a workspace of its own (built by `make bench` and the round-trip test
# below), so it is formatted and linted on its own, into the same target directory.
BENCH_CRATE=(--manifest-path tools/lambda-bench/Cargo.toml)

step "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt "${BENCH_CRATE[@]}" -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy "${BENCH_CRATE[@]}" --target-dir "$ROOT/target" --all-targets -- -D warnings

step "cargo deny: advisories (offline RustSec snapshot), licenses, bans, sources"
scripts/deny.sh

step "throwaway postgres: plain (port $DB_PORT), TLS (port $FAULT_PORT), PgBouncer in front of each"
scripts/pg.sh destroy test "$DB_PORT" >/dev/null 2>&1 || true
scripts/pg.sh destroy faults "$FAULT_PORT" >/dev/null 2>&1 || true
scripts/pg.sh start test "$DB_PORT"
PG_TLS=1 scripts/pg.sh start faults "$FAULT_PORT"
scripts/pgbouncer.sh start testbouncer $((DB_PORT + 3)) test "$DB_PORT" 10
scripts/pgbouncer.sh start faultbouncer $((DB_PORT + 2)) faults "$FAULT_PORT" 10
export TEST_DATABASE_URL FAULT_PG="faults $FAULT_PORT" FAULT_BOUNCER_PORT=$((DB_PORT + 2))
TEST_DATABASE_URL="$(scripts/pg.sh url test "$DB_PORT" postgres)"

# Starts a MailDev afresh (one left by an interrupted run is stopped: its inbox is forgotten).
start_maildev() {  # start_maildev NAME SMTP_PORT WEB_PORT
  scripts/maildev.sh stop "$@" >/dev/null 2>&1 || true
  MAILDEVS="$MAILDEVS$*;"
  scripts/maildev.sh start "$@"
}

step "throwaway MailDev for the cargo tests (SMTP port ${TEST_MAILDEV[1]}, web port ${TEST_MAILDEV[2]})"
start_maildev "${TEST_MAILDEV[@]}"
export TEST_SMTP_URL TEST_MAILDEV_URL
TEST_SMTP_URL="$(scripts/maildev.sh url "${TEST_MAILDEV[@]}")"
TEST_MAILDEV_URL="$(scripts/maildev.sh web-url "${TEST_MAILDEV[@]}")"

# node_modules/ is in place now (maildev.sh installs package-lock.json, @redocly/cli with it).
step "openapi.yaml: redocly lint, openapi-spec-validator, and its routes against the router and template"
node_modules/.bin/redocly lint openapi.yaml
"$VENV/bin/openapi-spec-validator" openapi.yaml
"$VENV/bin/pytest" -q scripts/contract 2>&1 | tee -a "$LOG"

step "cargo test: unit, database, handler, fault and CLI tests"
cargo test --workspace 2>&1 | tee -a "$LOG"

step "database and handler tests again, through PgBouncer in transaction mode"
# shellcheck disable=SC2097,SC2098 # TEST_DIRECT_DATABASE_URL is the cluster's URL, before the override
TEST_DIRECT_DATABASE_URL="$TEST_DATABASE_URL" \
  TEST_DATABASE_URL="$(scripts/pgbouncer.sh url testbouncer $((DB_PORT + 3)) test "$DB_PORT" postgres)" \
  cargo test -p shared --test db --test handlers --test logging --test sessions --test attacks \
    --test account --test mailer --test handlers_account 2>&1 | tee -a "$LOG"

step "round trips per request, every route of every function (tools/lambda-bench's proxy)"
scripts/round-trips.sh 2>&1 | tee -a "$LOG"

# The real binaries through cargo lambda watch and the local gateway, driven over HTTP, their
# mail to a MailDev of this pass's own (the tests read it by recipient through MAILDEV_URL; a
# fault test stops and restarts it with `scripts/maildev.sh stop|start $MAILDEV_CTL`, and runs
# the mailer with `$CARGO_LAMBDA lambda invoke mailer --invoke-port $LAMBDA_INVOKE_PORT`).
# MAIL_ANSWER_MS=200: forgot and resend answer after 200 ms instead of 500, for shorter timing tests.
serve() {  # serve PORT DATABASE_URL
  local port="$1" database_url="$2"
  local maildev=("e2e-$port" $((port + 26)) $((port + 81)))
  start_maildev "${maildev[@]}"
  export SMTP_URL MAILDEV_URL MAILDEV_CTL="${maildev[*]}" MAIL_ANSWER_MS=200 \
    CARGO_LAMBDA="$VENV/bin/cargo-lambda" LAMBDA_INVOKE_PORT=$((port + 1))
  SMTP_URL="$(scripts/maildev.sh url "${maildev[@]}")"
  MAILDEV_URL="$(scripts/maildev.sh web-url "${maildev[@]}")"
  start_gateway "$port"
  SERVER_PIDS="${SERVER_PIDS:-} $GATEWAY_PID"
  # shellcheck disable=SC2046
  DATABASE_URL="$database_url" setsid "$VENV/bin/cargo-lambda" $(watch_args "$port") --ignore-changes \
    >"$ROOT/target/e2e-watch-$port.log" 2>&1 &
  SERVER_PIDS="$SERVER_PIDS $!"
}

e2e() {  # e2e PORT DATABASE_URL
  local port="$1" database_url="$2"
  serve "$port" "$database_url"
  if ! API_URL="http://127.0.0.1:$port" DATABASE_URL="$database_url" "$VENV/bin/pytest" -q scripts/e2e 2>&1 | tee -a "$LOG"; then
    echo "end-to-end tests failed; the functions' log is in target/e2e-watch-$port.log" >&2
    exit 1
  fi
}

step "end-to-end over HTTP: the real binaries through cargo lambda watch, RS256 keys"
scripts/pg.sh psql test "$DB_PORT" -qc 'CREATE DATABASE e2e'
unset JWT_SECRET JWT_PRIVATE_KEY JWT_KEY_ID JWT_PUBLIC_KEYS JWT_ISSUER JWT_AUDIENCE DATABASE_URL \
  ACCESS_TOKEN_TTL_SECONDS PASSWORD_MIN_LENGTH IP_RATE_LIMIT_PER_MINUTE REFRESH_REUSE_GRACE_SECONDS \
  SESSION_IDLE_SECONDS SESSION_MAX_SECONDS LOGIN_BACKOFF_AFTER LOGIN_BACKOFF_MAX_SECONDS \
  SMTP_URL SMTP_URL_SECRET_ARN SMTP_TIMEOUT_MS MAIL_FROM MAIL_PRODUCT_NAME APP_URL \
  MAIL_RESEND_INTERVAL_SECONDS MAIL_MAX_PER_HOUR EMAIL_VERIFY_TTL_SECONDS PASSWORD_RESET_TTL_SECONDS \
  REQUIRE_VERIFIED_EMAIL MAIL_ANSWER_MS
E2E_URL="$(scripts/pg.sh url test "$DB_PORT" e2e)"
DATABASE_URL="$E2E_URL" cargo run --quiet -p cli --bin authctl -- migrate
DATABASE_URL="$E2E_URL" cargo run --quiet -p cli --bin authctl -- verify
cargo build --quiet "${FUNCTION_BINS[@]}"
# The suite runs against the default settings (limits on): each test uses its own loopback
# source address, which the local gateway passes on as requestContext.http.sourceIp.
export JWT_PRIVATE_KEY JWT_KEY_ID=e2e-key DATA_ENCRYPTION_KEY
DATA_ENCRYPTION_KEY="$(openssl rand -base64 32)"
JWT_PRIVATE_KEY="$(openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null)"

# The contract (openapi.yaml) against the real functions, two ways (scripts/contract/run.sh),
# each against an API and a database of its own, in the background beside an end-to-end pass
# (each takes minutes, mostly waiting on the other's requests): as a stranger, with the default
# limits on, beside the first pass; with real accounts, the per-address limit off (one client
# address would otherwise meet 429 at its 61st sign-up), beside the second.
fresh_database() {  # fresh_database NAME: a new database on the test cluster, migrated; prints its URL
  local url
  scripts/pg.sh psql test "$DB_PORT" -qc "CREATE DATABASE $1"
  url="$(scripts/pg.sh url test "$DB_PORT" "$1")"
  DATABASE_URL="$url" cargo run --quiet -p cli --bin authctl -- migrate >&2
  echo "$url"
}
background_done() {  # background_done PID OUTPUT WHAT PORT: a background run's outcome, into the log
  local rc=0
  wait "$1" || rc=$?
  tee -a "$LOG" <"$2"
  if [[ $rc -ne 0 ]]; then
    echo "$3 failed; the functions' log is in target/e2e-watch-$4.log" >&2
    exit 1
  fi
}
contract() {  # contract MODE PORT [IP_RATE_LIMIT_PER_MINUTE]: a fresh API, MODE run against it
  local mode="$1" port="$2" url
  url="$(fresh_database "contract_$mode")"
  if [[ -n "${3:-}" ]]; then
    IP_RATE_LIMIT_PER_MINUTE="$3" serve "$port" "$url"
  else
    serve "$port" "$url"
  fi
  setsid scripts/contract/run.sh "http://127.0.0.1:$port" "$mode" >"$ROOT/target/contract-$mode.log" 2>&1 &
  CONTRACT_PIDS="${CONTRACT_PIDS:-} $!"
  eval "CONTRACT_${mode^^}_PID=$!"
}
contract_done() {  # contract_done MODE PORT: its outcome, into the log
  local mode="$1" pid_var="CONTRACT_${1^^}_PID"
  step "contract: schemathesis, $mode (ran beside an end-to-end pass)"
  background_done "${!pid_var}" "$ROOT/target/contract-$mode.log" "the contract run ($mode)" "$2"
}

# The pages in headless Chromium (scripts/browser), against an API and a database of their own,
# in the background beside the second pass. A browser's every request comes from 127.0.0.1, so
# the per-address limit is off there (the mail limits stay on); the issuer, and so APP_URL (the
# mail's links), is that API's own base URL, as make dev's is.
browser_tests() {  # browser_tests PORT
  local port="$1" url
  url="$(fresh_database browser)"
  IP_RATE_LIMIT_PER_MINUTE=0 JWT_ISSUER="http://127.0.0.1:$port" serve "$port" "$url"
  API_URL="http://127.0.0.1:$port" DATABASE_URL="$url" \
    setsid "$VENV/bin/pytest" -q -p no:cacheprovider scripts/browser >"$ROOT/target/browser.log" 2>&1 &
  BROWSER_PID=$!
  CONTRACT_PIDS="${CONTRACT_PIDS:-} $!"
}
browser_tests_done() {  # browser_tests_done PORT
  step "the pages in headless Chromium (ran beside the second end-to-end pass; screenshots in target/screenshots)"
  background_done "$BROWSER_PID" "$ROOT/target/browser.log" "the browser tests" "$1"
}

contract stranger $((E2E_PORT + 30))
e2e "$E2E_PORT" "$E2E_URL"
contract_done stranger $((E2E_PORT + 30))
contract accounts $((E2E_PORT + 20)) 0
browser_tests $((E2E_PORT + 40))

step "end-to-end over HTTP again: HS256, the functions reaching Postgres through PgBouncer"
unset JWT_PRIVATE_KEY JWT_KEY_ID
export JWT_SECRET
JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
e2e $((E2E_PORT + 10)) "$(scripts/pgbouncer.sh url testbouncer $((DB_PORT + 3)) test "$DB_PORT" e2e)"

contract_done accounts $((E2E_PORT + 20))
browser_tests_done $((E2E_PORT + 40))

step "cfn-lint template.yaml"
"$VENV/bin/cfn-lint" template.yaml
echo "cfn-lint: template.yaml has no findings"

# One closing line for everything that ran: cargo's "test result" lines and pytest's summaries.
python3 - "$LOG" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
passed = failed = 0
for p, f in re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed", text):
    passed += int(p); failed += int(f)
for line in re.findall(r"^=*\s*(\d+ passed.*?)(?: in [\d.]+s)?\s*=*$", text, re.M):
    passed += int(re.search(r"(\d+) passed", line).group(1))
    m = re.search(r"(\d+) failed", line)
    failed += int(m.group(1)) if m else 0
# Schemathesis counts generated requests, not tests: reported beside, not added in.
cases = [int(n) for n in re.findall(r"^\s*(\d+) generated, \1 passed", text, re.M)]
print(f"\nmake test: {passed} passed, {failed} failed"
      + (f" (and {sum(cases)} generated requests in {len(cases)} schemathesis runs, all passed)" if cases else ""))
PY
