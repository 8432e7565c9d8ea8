# Sourced by dev.sh and test.sh: the project-local tool environment.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="$ROOT/.venv"

step() { printf '\n==> %s\n' "$*"; }

# The venv holds cargo-lambda, cfn-lint and pytest (scripts/requirements.txt), nothing global.
ensure_venv() {
  local stamp="$VENV/.requirements"
  if [[ -f "$stamp" ]] && cmp -s "$stamp" "$ROOT/scripts/requirements.txt"; then
    return
  fi
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
    { echo "python3 3.11 or newer is required (apt-get install -y python3 python3-venv)" >&2; exit 1; }
  step "installing cargo-lambda, cfn-lint and pytest into .venv"
  if [[ ! -x "$VENV/bin/python" ]] && ! python3 -m venv "$VENV"; then
    echo "python3 -m venv failed: on Debian, apt-get install -y python3-venv" >&2
    exit 1
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/scripts/requirements.txt"
  cp "$ROOT/scripts/requirements.txt" "$stamp"
}

# A first `make dev` writes a random development JWT_SECRET into .env (gitignored).
ensure_dotenv() {
  local file="$ROOT/.env"
  if [[ ! -f "$file" ]] || ! grep -q '^JWT_SECRET=' "$file"; then
    (umask 077 && printf '# Local development settings (gitignored). Variables set in the environment win.\nJWT_SECRET=%s\n' \
      "$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" >>"$file")
    echo "wrote a random development JWT_SECRET to .env"
  fi
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
  GATEWAY_PID=$!
}

watch_args() {
  local port="$1"
  echo lambda watch --invoke-address 127.0.0.1 --invoke-port "$((port + 1))" --disable-cors
}
