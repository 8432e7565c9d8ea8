#!/usr/bin/env bash
# `make bench`: measured speed, memory and size of every function, written to
# target/bench/results.md (BENCHMARKS.md at the repository root is a copy of one run, with the
# analysis). The harness is tools/lambda-bench, its own cargo workspace, built only here.
#
#   1. a dedicated Postgres with TLS (.local/pg/bench, port 54350, PG_TLS=1: a throwaway CA and
#      a certificate for "localhost"), a fresh database, migrated; a dedicated MailDev;
#   2. the release binaries of every function (scripts/env.sh's FUNCTIONS, the workspace's
#      functions/* members), their stripped and zipped sizes, and the arm64 Lambda zips that
#      `cargo lambda build --arm64` makes (skip with BENCH_ARM64=0);
#   3. criterion micro benchmarks: argon2id, JWT, email and password parsing;
#   4. `lambda-bench runtime`: the release binaries under a Lambda Runtime API stand-in — init
#      with TLS configured and no connection (system roots, one root) and with a verified TLS
#      connection, the first request after init and warm runs at concurrency 1 and 4 over TLS,
#      the round trips of every route (counted by a proxy, plain TCP), peak RSS, and the floor
#      (argon2id and one round trip) measured between the invocations;
#   5. `lambda-bench e2e`: HTTP through scripts/gateway.py and `cargo lambda watch --release`
#      (port 9300);
#   6. `lambda-bench concurrency`: 50 users × 3 function processes (pool size 1) against
#      PgBouncer in transaction mode with 10 server connections: every flow must succeed;
#   7. `lambda-bench report`: target/bench/results.md and results.json.
#
# Run counts can be lowered for a quick look: BENCH_RUNS (warm requests per route, 200),
# BENCH_COSTLY_RUNS (routes that need an account, session or mail set up per request, 40),
# BENCH_INIT_RUNS (10 per variant), BENCH_DB_RUNS, BENCH_ARGON2_RUNS, BENCH_E2E_RUNS,
# BENCH_CONCURRENCY. Everything started here is stopped on exit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

DB_PORT="${BENCH_DB_PORT:-54350}"
POOLER_PORT="${BENCH_POOLER_PORT:-54351}"
E2E_PORT="${BENCH_E2E_PORT:-9300}"
POOLER_SERVER_CONNS="${BENCH_POOLER_MAX_SERVER_CONNS:-10}"
SMTP_PORT="${BENCH_SMTP_PORT:-54352}"
MAILDEV_WEB_PORT="${BENCH_MAILDEV_WEB_PORT:-54353}"
OUT="$ROOT/target/bench"
BENCH_HARNESS="$ROOT/target/release/lambda-bench"
PACKAGES=()
for function in "${FUNCTIONS[@]}"; do PACKAGES+=(-p "$function"); done

cleanup() {
  # gateway.py and cargo lambda watch run in their own process groups (setsid), so this also
  # stops the functions that cargo lambda started.
  # (Only when started: `kill -- -0` would signal this script's own process group.)
  local pid
  for pid in ${WATCH_PID:-} ${GATEWAY_PID:-}; do kill -- "-$pid" 2>/dev/null || true; done
  scripts/pgbouncer.sh stop bench "$POOLER_PORT" >/dev/null 2>&1 || true
  scripts/maildev.sh stop bench "$SMTP_PORT" "$MAILDEV_WEB_PORT" >/dev/null 2>&1 || true
  scripts/pg.sh stop bench "$DB_PORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT

started=$SECONDS
elapsed() { printf '    (%ds so far)\n' "$((SECONDS - started))"; }

ensure_venv
rm -rf "$OUT"
mkdir -p "$OUT/logs"
export BENCH_OUT_DIR="$OUT" BENCH_BIN_DIR="$ROOT/target/release" BENCH_RUSTC BENCH_ROOT="$ROOT"
export BENCH_FUNCTIONS="${FUNCTIONS[*]}"
BENCH_RUSTC="$(rustc -V)"

step "dedicated postgres with TLS (.local/pg/bench, port $DB_PORT), fresh database; MailDev"
scripts/pg.sh destroy bench "$DB_PORT" >/dev/null 2>&1 || true
PG_TLS=1 scripts/pg.sh start bench "$DB_PORT"
export BENCH_DATABASE_URL BENCH_TLS_DATABASE_URL BENCH_TLS_CA BENCH_SMTP_URL BENCH_MAILDEV_URL
BENCH_DATABASE_URL="$(scripts/pg.sh url bench "$DB_PORT")"
BENCH_TLS_CA="$(scripts/pg.sh ca bench "$DB_PORT")"
# The server's certificate names "localhost" only (scripts/pg.sh): verify-full needs that host.
BENCH_TLS_DATABASE_URL="$(sed -E 's#@127\.0\.0\.1:#@localhost:#; s#\?sslmode=disable$##' <<<"$BENCH_DATABASE_URL")?sslmode=verify-full&sslrootcert=$BENCH_TLS_CA"
DATABASE_URL="$BENCH_DATABASE_URL" cargo run --quiet -p cli --bin authctl -- migrate
scripts/maildev.sh start bench "$SMTP_PORT" "$MAILDEV_WEB_PORT"
BENCH_SMTP_URL="$(scripts/maildev.sh url bench "$SMTP_PORT" "$MAILDEV_WEB_PORT")"
BENCH_MAILDEV_URL="$(scripts/maildev.sh web-url bench "$SMTP_PORT" "$MAILDEV_WEB_PORT")"

step "release binaries: ${FUNCTIONS[*]}; the harness (tools/lambda-bench)"
cargo build --release "${PACKAGES[@]}"
# Its own workspace, sharing this build's target directory (and so its artifacts).
cargo build --release --manifest-path tools/lambda-bench/Cargo.toml --target-dir "$ROOT/target"
elapsed

step "arm64 Lambda zips (cargo lambda build --release --arm64 --output-format zip)"
ARM64_STATUS="skipped (BENCH_ARM64=0)"
if [[ "${BENCH_ARM64:-1}" != 0 ]]; then
  # cargo lambda cross-compiles with zig; the ziglang wheel puts it into .venv.
  if ! "$VENV/bin/python" -c 'import ziglang' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check ziglang ||
      echo "pip install ziglang failed" >&2
  fi
  for function in "${FUNCTIONS[@]}"; do rm -f "target/lambda/$function/bootstrap.zip"; done
  if PATH="$VENV/bin:$PATH" "$VENV/bin/cargo-lambda" lambda build --release --arm64 \
    --output-format zip "${PACKAGES[@]}" >"$OUT/logs/arm64-build.log" 2>&1; then
    ARM64_STATUS="built by \`cargo lambda build --release --arm64 --output-format zip\` (cargo-lambda $("$VENV/bin/cargo-lambda" lambda --version | awk '{print $2}'), zig $("$VENV/bin/python" -m ziglang version 2>/dev/null || echo '?') from the ziglang wheel); aarch64 links OpenSSL statically (vendored, shared/Cargo.toml)"
  else
    reason="$(grep -v '^\s*$' "$OUT/logs/arm64-build.log" | tail -n 3 | tr '\n' ' ' | sed 's/|/\\|/g')"
    ARM64_STATUS="failed: $reason (full log: target/bench/logs/arm64-build.log)"
    echo "arm64 build failed; the x86_64 zips are reported instead: $reason" >&2
  fi
fi
echo "$ARM64_STATUS"
elapsed

step "binary sizes: stripped, zipped as bootstrap"
"$VENV/bin/python" - "$ROOT" "$OUT" "$ARM64_STATUS" "${FUNCTIONS[@]}" <<'PY'
import json, os, shutil, subprocess, sys, zipfile
root, out, arm64_status, *functions = sys.argv[1:]
sizes = {"x86_64": {}, "arm64": {"status": arm64_status}}
def zip_bootstrap(binary, zip_path):
    # What Lambda takes: one executable named bootstrap at the root of the zip.
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o755 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(binary, "rb") as f:
            zf.writestr(info, f.read())
for name in functions:
    work = os.path.join(out, "zip", "x86_64", name)
    os.makedirs(work, exist_ok=True)
    boot = os.path.join(work, "bootstrap")
    src = os.path.join(root, "target", "release", name)
    if shutil.which("strip"):
        subprocess.run(["strip", "-o", boot, src], check=True)  # the release profile strips already
    else:
        shutil.copy(src, boot)
    zip_bootstrap(boot, os.path.join(work, "bootstrap.zip"))
    sizes["x86_64"][name] = {"binary": os.path.getsize(boot),
                             "zip": os.path.getsize(os.path.join(work, "bootstrap.zip"))}
    arm_bin = os.path.join(root, "target", "aarch64-unknown-linux-gnu", "release", name)
    arm_zip = os.path.join(root, "target", "lambda", name, "bootstrap.zip")
    if arm64_status.startswith("built") and os.path.exists(arm_zip):
        sizes["arm64"][name] = {"binary": os.path.getsize(arm_bin), "zip": os.path.getsize(arm_zip)}
    print(f"{name:>10}: x86_64 {sizes['x86_64'][name]}, arm64 {sizes['arm64'].get(name, '-')}")
ldd = subprocess.run(["ldd", os.path.join(root, "target", "release", functions[0])],
                     capture_output=True, text=True).stdout
libs = sorted({line.split()[0] for line in ldd.splitlines() if "=>" in line})
sizes["x86_64"]["linkage"] = ("dynamically linked to " + ", ".join(libs) +
                              " (the system OpenSSL is not in the zip)" if "libssl" in ldd else
                              "dynamically linked to " + ", ".join(libs))
with open(os.path.join(out, "sizes.json"), "w") as f:
    json.dump(sizes, f, indent=2)
PY

step "criterion micro benchmarks (cargo bench -p shared --bench micro)"
# JWT_PRIVATE_KEY switches the service to RS256: bench that too when openssl can make a key.
if command -v openssl >/dev/null &&
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$OUT/jwt-rsa.pem" 2>/dev/null; then
  export BENCH_JWT_RSA_KEY="$OUT/jwt-rsa.pem"
fi
cargo bench -p shared --bench micro
elapsed

step "init: secrets read through a stand-in of the Parameters and Secrets extension"
cargo test --release -p shared --test secrets init_cost -- --ignored --nocapture

step "every route of every function under a Lambda Runtime API stand-in (lambda-bench runtime)"
"$BENCH_HARNESS" runtime
elapsed

step "end-to-end HTTP: gateway.py on :$E2E_PORT → cargo lambda watch --release"
# Every request comes from 127.0.0.1: raise the per-IP limit (the check still runs).
export DATABASE_URL="$BENCH_DATABASE_URL" AWS_LAMBDA_LOG_LEVEL=WARN IP_RATE_LIMIT_PER_MINUTE=1000000 JWT_SECRET
JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
export DATA_ENCRYPTION_KEY="${DATA_ENCRYPTION_KEY:-$(python3 -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')}"
unset JWT_ISSUER JWT_AUDIENCE JWT_PRIVATE_KEY ACCESS_TOKEN_TTL_SECONDS PASSWORD_MIN_LENGTH DATABASE_POOL_MAX_SIZE SMTP_URL
start_gateway "$E2E_PORT" >"$OUT/logs/gateway.log" 2>&1
# shellcheck disable=SC2046
setsid "$VENV/bin/cargo-lambda" $(watch_args "$E2E_PORT") --release --ignore-changes \
  >"$OUT/logs/watch.log" 2>&1 &
WATCH_PID=$!
BENCH_E2E_URL="http://127.0.0.1:$E2E_PORT" BENCH_E2E_WATCH_URL="http://127.0.0.1:$((E2E_PORT + 1))" \
  "$BENCH_HARNESS" e2e
kill -- "-$WATCH_PID" "-$GATEWAY_PID" 2>/dev/null || true
wait "$WATCH_PID" "$GATEWAY_PID" 2>/dev/null || true
unset WATCH_PID GATEWAY_PID
elapsed

step "concurrency: 50 users × 3 processes → PgBouncer (transaction mode, $POOLER_SERVER_CONNS server connections)"
scripts/pgbouncer.sh start bench "$POOLER_PORT" bench "$DB_PORT" "$POOLER_SERVER_CONNS"
BENCH_POOLER_URL="$(scripts/pgbouncer.sh url bench "$POOLER_PORT" bench "$DB_PORT")" \
  BENCH_POOLER_ADMIN_URL="$(scripts/pgbouncer.sh url bench "$POOLER_PORT" bench "$DB_PORT" pgbouncer)" \
  BENCH_POOLER_MAX_SERVER_CONNS="$POOLER_SERVER_CONNS" \
  "$BENCH_HARNESS" concurrency
elapsed

step "report: target/bench/results.md"
"$BENCH_HARNESS" report
echo "make bench took $((SECONDS - started)) s"
