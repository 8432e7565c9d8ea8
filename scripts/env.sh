# Sourced by dev.sh and test.sh: the project-local tool environment.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="$ROOT/.venv"

step() { printf '\n==> %s\n' "$*"; }

# The Lambda functions, in one place: the workspace members under functions/ in Cargo.toml
# (each package's binary has its name). dev.sh, test.sh and the Makefile build from this list.
FUNCTIONS=()
while IFS= read -r _function; do FUNCTIONS+=("$_function"); done < <(
  sed 's/#.*//' "$ROOT/Cargo.toml" | awk '/^[[:space:]]*members[[:space:]]*=/ { f = 1 } f { print } f && /\]/ { exit }' |
    grep -oE '"functions/[A-Za-z0-9_-]+"' | sed -E 's#"functions/(.*)"#\1#')
unset _function
FUNCTION_BINS=()   # --bin register --bin login ...
for _function in "${FUNCTIONS[@]}"; do FUNCTION_BINS+=(--bin "$_function"); done
unset _function
has_function() { [[ " ${FUNCTIONS[*]} " == *" $1 "* ]]; }

# The browser tests drive Debian's Chromium (no browser can be downloaded): CHROMIUM, else
# /usr/bin/chromium, installed with apt-get when missing and this is root, as PostgreSQL is.
ensure_chromium() {
  CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
  if [[ ! -x "$CHROMIUM" && $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    step "Chromium not found; installing it: apt-get update && apt-get install -y chromium"
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2 ||
      { echo "could not install chromium" >&2; exit 1; }
  fi
  [[ -x "$CHROMIUM" ]] || {
    echo "the browser tests need Chromium at $CHROMIUM: sudo apt-get update && sudo apt-get install -y chromium (or set CHROMIUM)" >&2
    exit 1
  }
  export CHROMIUM
}

# The venv holds cargo-lambda, cfn-lint, pytest and schemathesis (scripts/requirements.txt), nothing global.
ensure_venv() {
  local stamp="$VENV/.requirements"
  if [[ -f "$stamp" ]] && cmp -s "$stamp" "$ROOT/scripts/requirements.txt"; then
    return
  fi
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
    { echo "python3 3.11 or newer is required (apt-get install -y python3 python3-venv)" >&2; exit 1; }
  step "installing cargo-lambda, cfn-lint, pytest and schemathesis into .venv"
  if [[ ! -x "$VENV/bin/python" ]] && ! python3 -m venv "$VENV"; then
    echo "python3 -m venv failed: on Debian, apt-get install -y python3-venv" >&2
    exit 1
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/scripts/requirements.txt"
  cp "$ROOT/scripts/requirements.txt" "$stamp"
}

# `make dev` writes what a first run lacks into .env (gitignored, mode 600), each only when it
# is set neither in the environment nor in .env:
# - a development RSA key pair (neither JWT_PRIVATE_KEY nor JWT_SECRET): RS256 with a kid, as
#   in the cloud, so JWKS and discovery have something to publish;
# - DATA_ENCRYPTION_KEY, 32 random bytes in base64, the root of the service's derived keys.
# JWT_ISSUER is not written: dev.sh derives it from PORT unless it is set by hand.
ensure_dotenv() {
  local file="$ROOT/.env" pem
  in_dotenv() { [[ -f "$file" ]] && grep -qE "^(export +)?($1)=" "$file"; }
  if ! command -v openssl >/dev/null; then
    [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null && { apt-get update -qq && apt-get install -y -qq openssl; }
    command -v openssl >/dev/null || { echo "openssl is needed to make development keys" >&2; exit 1; }
  fi
  (
    umask 077
    [[ -f "$file" ]] || echo "# Local development settings (gitignored). Variables set in the environment win." >"$file"
    if [[ -z "${JWT_PRIVATE_KEY:-}" && -z "${JWT_SECRET:-}" ]] && ! in_dotenv 'JWT_PRIVATE_KEY|JWT_SECRET'; then
      pem="$(openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null | awk '{printf "%s\\n", $0}')"
      {
        echo "JWT_PRIVATE_KEY=\"$pem\""
        echo "JWT_KEY_ID=dev-$(date -u +%Y%m%d)"
      } >>"$file"
      echo "wrote a development RSA signing key (RS256, kid dev-$(date -u +%Y%m%d)) to .env"
    fi
    if [[ -z "${DATA_ENCRYPTION_KEY:-}" ]] && ! in_dotenv DATA_ENCRYPTION_KEY; then
      echo "DATA_ENCRYPTION_KEY=$(openssl rand -base64 32)" >>"$file"
      echo "wrote a development DATA_ENCRYPTION_KEY to .env"
    fi
    # Earlier versions pinned the issuer of the first run's port here, so `PORT=9400 make dev`
    # still published localhost:9000: drop that generated line.
    if grep -qE '^JWT_ISSUER=http://localhost:[0-9]+$' "$file"; then
      sed -i -E '/^JWT_ISSUER=http:\/\/localhost:[0-9]+$/d' "$file"
      echo "dropped the generated JWT_ISSUER from .env: it now follows PORT"
    fi
  )
}

# Exports each KEY=VALUE of .env that the environment does not already set.
load_dotenv() {
  local file="$ROOT/.env" line key value
  [[ -f "$file" ]] || return 0
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
    [[ "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    key="${BASH_REMATCH[2]}"; value="${BASH_REMATCH[3]}"
    value="${value%\"}"; value="${value#\"}"; value="${value%\'}"; value="${value#\'}"
    [[ -n "${!key+set}" ]] || export "$key=$value"
  done <"$file"
}

# The functions answer on http://localhost:PORT through the local gateway (scripts/gateway.py),
# which fronts cargo lambda watch on PORT+1. Both run in their own process group.
start_gateway() {
  local port="$1"
  setsid "$VENV/bin/python" "$ROOT/scripts/gateway.py" "$port" "$((port + 1))" &
  # shellcheck disable=SC2034 # read by the caller
  GATEWAY_PID=$!
}

watch_args() {
  local port="$1"
  echo lambda watch --invoke-address 127.0.0.1 --invoke-port "$((port + 1))" --disable-cors
}
