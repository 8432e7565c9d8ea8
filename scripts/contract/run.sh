#!/usr/bin/env bash
# The contract run: schemathesis sends generated requests (valid and invalid) to every operation
# of the document the API serves at /openapi.json, with every check on, and fails on any
# response the document does not allow (a 5xx, an undocumented status, header or body, a wrong
# content type, an invalid request accepted, a valid one refused, ...).
#
#   scripts/contract/run.sh API_URL stranger|accounts
#
# stranger  as anyone on the internet can: the API's own limits, and only the account
#           schemathesis signs up for itself (a run against `make dev` is this one);
# accounts  the bearer routes with real tokens of fresh accounts (hooks.py), and the document's
#           links followed (register → login → me, sessions, refresh, logout, ...). Meant for an
#           API whose per-address limit is off (IP_RATE_LIMIT_PER_MINUTE=0), which make test
#           starts for it.
#
# CONTRACT_SECONDS bounds the run (default 90; fuzzing and the stateful phase repeat until it is
# spent), CONTRACT_SEED makes it repeatable (default: today's date, printed; rerun a failure with
# the seed it printed). The report is in target/contract/MODE/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"
url="${1:?usage: run.sh API_URL stranger|accounts}"
url="${url%/}"
mode="${2:?usage: run.sh API_URL stranger|accounts}"
seed="${CONTRACT_SEED:-$(date -u +%Y%m%d)}"
seconds="${CONTRACT_SECONDS:-90}"
report="$ROOT/target/contract/$mode"
mkdir -p "$report"
ensure_venv

args=(--config-file "$ROOT/scripts/contract/schemathesis.toml" --no-color run "$url/openapi.json" --url "$url"
  --checks all --seed "$seed" --max-time "$seconds" --workers 2 --request-timeout 30
  --report junit --report-dir "$report")
case "$mode" in
  # ignored_auth wants 401 for a bad token, but once the address's window is full the contract
  # answers 429 instead (refused tokens count against it): with limits on that check depends on
  # timing, so it runs in the accounts mode, where the window is off and the answer is 401.
  stranger) args+=(--exclude-checks ignored_auth) ;;
  accounts) export SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$ROOT/scripts/contract" CONTRACT_API_URL="$url" ;;
  *) echo "run.sh: mode is stranger or accounts, not $mode" >&2; exit 2 ;;
esac
echo "schemathesis ($mode) against $url for at most ${seconds}s, seed $seed"
"$VENV/bin/st" "${args[@]}"
