#!/usr/bin/env bash
# MailDev, the local mail server of `make dev` and `make test`: it accepts every message over
# SMTP, delivers none, and shows them in a web inbox and a REST API.
#
#   scripts/maildev.sh start   NAME SMTP_PORT WEB_PORT   install when needed, start, wait until ready
#   scripts/maildev.sh stop    NAME SMTP_PORT WEB_PORT   stop (succeeds when not running)
#   scripts/maildev.sh status  NAME SMTP_PORT WEB_PORT   exit 0 when running on these ports
#   scripts/maildev.sh url     NAME SMTP_PORT WEB_PORT   print the SMTP_URL: smtp://127.0.0.1:SMTP_PORT
#   scripts/maildev.sh web-url NAME SMTP_PORT WEB_PORT   print the inbox: http://127.0.0.1:WEB_PORT
#
# MailDev is the npm package `maildev`, pinned in package.json / package-lock.json at the repo
# root and installed by `npm ci` into the repo's node_modules/ (gitignored), never globally:
# on first use and whenever package-lock.json changes. It needs Node.js 20 or newer; run as
# root on Debian without Node.js, this installs the distribution's nodejs and npm when those are
# new enough, and says where to get Node.js otherwise.
#
# Both servers listen on 127.0.0.1 only; no outgoing relay is configured, so nothing leaves the
# machine. Mail is kept in memory: a stop forgets it. The REST API (MailDev 3 serves it under
# /api): GET /api/email (all messages, JSON; filter with e.g. ?to.address=ann@example.com),
# GET /api/email/ID, DELETE /api/email/ID, DELETE /api/email/all, GET /api/healthz. The web inbox
# is the same address opened in a browser.
#
# Each NAME lives in .local/maildev/NAME/ (gitignored): maildev.pid, maildev.log, the settings
# file it is started with, and its scratch directory. The server runs in its own process group.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
HOME_DIR="$ROOT/.local/maildev"
PROG="scripts/maildev.sh"
NODE_MAJOR_MIN=20
READY_SECONDS="${MAILDEV_READY_SECONDS:-60}"

die() { echo "$PROG: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

check_port() {  # check_port WHAT VALUE
  if ! [[ "$2" =~ ^[0-9]+$ ]] || (($2 < 1024 || $2 > 65535)); then
    die "$1 must be a number from 1024 to 65535, got '$2'"
  fi
}

[[ $# -eq 4 ]] || usage
CMD="$1"; NAME="$2"; SMTP_PORT="$3"; WEB_PORT="$4"
case "$CMD" in start | stop | status | url | web-url) ;; *) usage ;; esac
[[ "$NAME" =~ ^[A-Za-z0-9_-]+$ ]] || die "name must match [A-Za-z0-9_-]+, got '$NAME'"
check_port "SMTP port" "$SMTP_PORT"
check_port "web port" "$WEB_PORT"
[[ "$SMTP_PORT" != "$WEB_PORT" ]] || die "SMTP and web cannot share port $SMTP_PORT"

BASE="$HOME_DIR/$NAME"
PID_FILE="$BASE/maildev.pid"      # line 1: the pid (= its process group); line 2: "SMTP WEB"
LOG="$BASE/maildev.log"
ENTRY="$ROOT/node_modules/maildev/dist/bin/maildev.js"
WEB_URL="http://127.0.0.1:$WEB_PORT"

# Serializes start/stop of one NAME, and the install (shared by all NAMEs).
lock() {  # lock FILE
  mkdir -p "$HOME_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$HOME_DIR/$1"
    flock -w 300 9 || die "timed out waiting for $HOME_DIR/$1 (another $PROG running?)"
  fi
}

# --- Node.js and the package ------------------------------------------------------------------

node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

need_node() {
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
    (($(node_major) >= NODE_MAJOR_MIN)); then
    return 0
  fi
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1 && ! command -v node >/dev/null 2>&1; then
    # Debian 12 carries Node.js 18, too old for MailDev 3: install only what is new enough.
    local candidate
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
    candidate="$(apt-cache policy nodejs 2>/dev/null | sed -nE 's/^ *Candidate: *([0-9]+).*/\1/p')"
    if [[ -n "$candidate" ]] && ((candidate >= NODE_MAJOR_MIN)); then
      say "Node.js not found; installing it:"
      say "+ apt-get install -y nodejs npm"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2 ||
        die "could not install nodejs and npm"
    fi
  fi
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
    (($(node_major) >= NODE_MAJOR_MIN)); then
    return 0
  fi
  local have="none"
  if command -v node >/dev/null 2>&1; then have="$(node --version 2>/dev/null || echo unknown)"; fi
  if command -v node >/dev/null 2>&1 && ! command -v npm >/dev/null 2>&1; then have="$have, without npm"; fi
  die "MailDev needs Node.js $NODE_MAJOR_MIN or newer with npm (found: $have).
  Install it from https://nodejs.org/en/download (or your distribution, e.g. sudo apt-get install -y nodejs npm
  where it carries $NODE_MAJOR_MIN+), or run with MAILDEV=0 to go without a mail server (mail off)."
}

# `npm ci` installs exactly package-lock.json; the stamp (a copy of the lock it installed) keeps
# later starts offline and fast, like ensure_venv's.
ensure_package() {
  local stamp="$ROOT/node_modules/.maildev-sh-lock"
  if [[ -f "$stamp" && -f "$ENTRY" ]] && cmp -s "$stamp" "$ROOT/package-lock.json"; then
    return 0
  fi
  need_node
  lock .lock-install
  if [[ -f "$stamp" && -f "$ENTRY" ]] && cmp -s "$stamp" "$ROOT/package-lock.json"; then
    return 0   # another start installed it while we waited
  fi
  say "installing MailDev (package-lock.json) into node_modules/ with npm ci"
  # --loglevel=error: two of MailDev's dependencies declare node >=22 yet run on 20; npm's
  # warnings about that would only alarm.
  if ! (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error) >&2 9>&-; then
    die "npm ci failed (output above); it needs the npm registry the first time"
  fi
  cp "$ROOT/package-lock.json" "$stamp"
  exec 9>&-
}

# --- server state -----------------------------------------------------------------------------

PID=""
RUNNING_PORTS=""
is_running() {  # sets PID and RUNNING_PORTS when the pid file names a live MailDev
  [[ -s "$PID_FILE" ]] || return 1
  PID="$(sed -n 1p "$PID_FILE" | tr -dc '0-9')"
  RUNNING_PORTS="$(sed -n 2p "$PID_FILE")"
  [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null || return 1
  # A recycled pid belongs to some other program: only ours runs maildev.js.
  tr '\0' ' ' <"/proc/$PID/cmdline" 2>/dev/null | grep -q "maildev/dist/bin/maildev.js" ||
    ps -o args= -p "$PID" 2>/dev/null | grep -q "maildev/dist/bin/maildev.js"
}

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

healthy() {  # the REST API answers, and so the whole server has started (never via a proxy)
  if command -v curl >/dev/null 2>&1; then
    [[ "$(curl -fsS --noproxy '*' --max-time 2 "$WEB_URL/api/healthz" 2>/dev/null)" == true ]]
  else
    python3 - "$WEB_URL/api/healthz" <<'PY' 2>/dev/null
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
sys.exit(opener.open(sys.argv[1], timeout=2).read().strip() != b"true")
PY
  fi
}

show_log() {  # this start's lines of the log (it is appended to across starts), at most 20
  awk '/^--- scripts\/maildev.sh start /{ n = 0 } { line[n++] = $0 } END { for (i = (n > 20 ? n - 20 : 0); i < n; i++) print line[i] }' \
    "$LOG" >&2 || true
}

# --- commands ---------------------------------------------------------------------------------

cmd_start() {
  ensure_package
  lock ".lock-$NAME"
  if is_running; then
    [[ "$RUNNING_PORTS" == "$SMTP_PORT $WEB_PORT" ]] ||
      die "maildev $NAME is already running with SMTP/web ports $RUNNING_PORTS; stop it first ('$PROG stop $NAME ${RUNNING_PORTS// / }')"
    echo "maildev $NAME already running: SMTP 127.0.0.1:$SMTP_PORT, inbox $WEB_URL"
    return 0
  fi
  local port
  for port in "$SMTP_PORT" "$WEB_PORT"; do
    ! port_answers "$port" ||
      die "port $port on 127.0.0.1 is already taken by another program: choose other ports (MAILDEV_SMTP_PORT, MAILDEV_WEB_PORT), or to use a mail server already running there, MAILDEV=0 SMTP_URL=smtp://127.0.0.1:PORT"
  done
  rm -f "$PID_FILE"
  mkdir -p "$BASE/tmp"
  rm -rf "${BASE:?}/tmp/"*
  # An explicit settings file stops MailDev from picking up a .maildevrc.json / maildev.config.*
  # of some parent directory; the command line sets everything else.
  echo '{}' >"$BASE/maildevrc.json"
  echo "--- $PROG start $NAME $SMTP_PORT $WEB_PORT, $(date -u '+%Y-%m-%d %H:%M:%S UTC')" >>"$LOG"
  # MAILDEV_* variables of the environment would be read as settings (basic auth on the API,
  # a relay, …): drop them all, so a run is the same everywhere. TMPDIR keeps MailDev's scratch
  # files (it writes each message's source there) in .local instead of /tmp.
  local unset_args=() var
  while IFS= read -r var; do unset_args+=(-u "$var"); done < <(compgen -e | grep '^MAILDEV_' || true)
  # 9>&-: the server must not inherit the lock, or it would hold it for as long as it runs.
  (cd "$BASE" && exec setsid env "${unset_args[@]}" TMPDIR="$BASE/tmp" \
    node "$ENTRY" --config "$BASE/maildevrc.json" \
    --smtp "$SMTP_PORT" --ip 127.0.0.1 --web "$WEB_PORT" --web-ip 127.0.0.1 \
    --max-emails 10000 </dev/null >>"$LOG" 2>&1 9>&-) &
  local pid=$!
  printf '%s\n%s %s\n' "$pid" "$SMTP_PORT" "$WEB_PORT" >"$PID_FILE"
  local deadline=$((SECONDS + READY_SECONDS))
  until port_answers "$SMTP_PORT" && healthy; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      say "maildev $NAME exited during start; last lines of $LOG:"
      show_log
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      # The group may not exist yet (setsid not run yet): then the process itself.
      kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
      rm -f "$PID_FILE"
      say "maildev $NAME did not answer on SMTP $SMTP_PORT and $WEB_URL within ${READY_SECONDS}s; last lines of $LOG:"
      show_log
      exit 1
    fi
    sleep 0.1
  done
  echo "maildev $NAME running: SMTP 127.0.0.1:$SMTP_PORT, inbox $WEB_URL"
}

cmd_stop() {
  [[ -d "$BASE" ]] || return 0
  lock ".lock-$NAME"
  if ! is_running; then
    rm -f "$PID_FILE"
    return 0
  fi
  [[ "$RUNNING_PORTS" == "$SMTP_PORT $WEB_PORT" ]] ||
    die "maildev $NAME runs with SMTP/web ports $RUNNING_PORTS, not $SMTP_PORT $WEB_PORT: left running"
  kill -TERM -- "-$PID" 2>/dev/null || kill -TERM "$PID" 2>/dev/null || true
  # MailDev closes its servers on SIGTERM (within 10 s by its own timeout); then insist.
  local deadline=$((SECONDS + 12))
  while kill -0 "$PID" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kill -KILL -- "-$PID" 2>/dev/null || kill -KILL "$PID" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  # The ports must be free when stop returns: a fault test restarts at once on the same ones.
  deadline=$((SECONDS + 5))
  while { port_answers "$SMTP_PORT" || port_answers "$WEB_PORT"; } && ((SECONDS < deadline)); do
    sleep 0.1
  done
  rm -f "$PID_FILE"
  echo "maildev $NAME stopped"
}

cmd_status() {
  if is_running; then
    if [[ "$RUNNING_PORTS" == "$SMTP_PORT $WEB_PORT" ]]; then
      echo "maildev $NAME running: SMTP 127.0.0.1:$SMTP_PORT, inbox $WEB_URL"
      return 0
    fi
    echo "maildev $NAME running with SMTP/web ports $RUNNING_PORTS, not $SMTP_PORT $WEB_PORT"
    return 1
  fi
  echo "maildev $NAME not running"
  return 1
}

case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) echo "smtp://127.0.0.1:$SMTP_PORT" ;;
  web-url) echo "$WEB_URL" ;;
esac
