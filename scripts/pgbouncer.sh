#!/usr/bin/env bash
# PgBouncer in transaction mode in front of a scripts/pg.sh cluster: a local stand-in for Neon's
# pooled ("-pooler") endpoint, for tests that must not depend on session state.
#
#   scripts/pgbouncer.sh start   NAME PORT PG_NAME PG_PORT [MAX_SERVER_CONNS]  start (default 10)
#   scripts/pgbouncer.sh url     NAME PORT PG_NAME PG_PORT [DB]   print the URL (default DB: auth)
#   scripts/pgbouncer.sh stop    NAME PORT [PG_NAME PG_PORT]      stop (succeeds when not running)
#   scripts/pgbouncer.sh status  NAME PORT [PG_NAME PG_PORT]      exit 0 when running on PORT
#   scripts/pgbouncer.sh destroy NAME PORT [PG_NAME PG_PORT]      stop, delete .local/pgbouncer/NAME
#
# The bouncer listens on 127.0.0.1:PORT without TLS and forwards every database name to the
# cluster PG_NAME on 127.0.0.1:PG_PORT (start that first: scripts/pg.sh start PG_NAME PG_PORT),
# logging in as "postgres" with the password pg.sh generated. Clients log in the same way
# (scram-sha-256), so the URL is that of the cluster with the bouncer's port:
#   postgres://postgres:PASSWORD@127.0.0.1:PORT/auth?sslmode=disable
# pool_mode = transaction: a server connection belongs to a client for one transaction only, so
# session state (SET, named prepared statements, advisory locks, LISTEN) does not survive
# between transactions. At most MAX_SERVER_CONNS server connections are opened in all (the
# limit is set per database and per user, and all clients are "postgres"); further clients
# queue (up to query_wait_timeout, 120 s). The admin console is the database "pgbouncer" (user
# postgres, same password): SHOW POOLS, SHOW CONFIG, ... No TLS and no channel binding: PgBouncer
# does not implement SCRAM-SHA-256-PLUS, so channel_binding=require cannot work through it.
#
# Everything lives in .local/pgbouncer/NAME/ (gitignored): pgbouncer.ini, userlist.txt (the
# password, mode 600), pgbouncer.pid and pgbouncer.log. start is idempotent: when already
# running it rewrites the configuration and reloads it (pool size, password); the port cannot
# change without a stop. Run as root, Debian's pgbouncer package is installed when missing (its
# own service is not started), and PgBouncer, which refuses to run as root, runs as the user
# "postgres" (else "nobody"), like the server pg.sh starts.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
PGB_HOME="$ROOT/.local/pgbouncer"
PG_HOME="$ROOT/.local/pg"
PROG="scripts/pgbouncer.sh"
STATE_HOME="$PGB_HOME"
# shellcheck source=scripts/unprivileged.sh
source "$ROOT/scripts/unprivileged.sh"

# The environment must not redirect our own psql (the readiness check) elsewhere.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE PGSERVICE \
  PGSERVICEFILE PGOPTIONS PGSSLMODE PGTARGETSESSIONATTRS PGCONNECT_TIMEOUT PGCHANNELBINDING

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

check_port() {  # check_port WHAT VALUE
  if ! [[ "$2" =~ ^[0-9]+$ ]] || (($2 < 1024 || $2 > 65535)); then
    die "$1 must be a number from 1024 to 65535, got '$2'"
  fi
}

check_name() {  # check_name WHAT VALUE
  [[ "$2" =~ ^[A-Za-z0-9_-]+$ ]] || die "$1 must match [A-Za-z0-9_-]+, got '$2'"
}

[[ $# -ge 3 ]] || usage
CMD="$1"; NAME="$2"; PORT="$3"; shift 3
PG_NAME=""; PG_PORT=""; MAX_CONNS=10; DB=auth
case "$CMD" in
  start | url)
    [[ $# -ge 2 && $# -le 3 ]] || usage
    PG_NAME="$1"; PG_PORT="$2"
    if [[ "$CMD" == start ]]; then MAX_CONNS="${3:-10}"; else DB="${3:-auth}"; fi
    ;;
  stop | status | destroy)
    # PG_NAME PG_PORT [MAX_SERVER_CONNS] are accepted (and unused) so callers can pass one set.
    [[ $# -le 3 ]] || usage
    ;;
  *) usage ;;
esac
check_name "bouncer name" "$NAME"
check_port "port" "$PORT"
if [[ -n "$PG_NAME" ]]; then
  check_name "cluster name" "$PG_NAME"
  check_port "cluster port" "$PG_PORT"
  [[ "$PG_PORT" != "$PORT" ]] || die "the bouncer and the cluster cannot share port $PORT"
fi
if ! [[ "$MAX_CONNS" =~ ^[0-9]+$ ]] || ((MAX_CONNS < 1 || MAX_CONNS > 1000)); then
  die "MAX_SERVER_CONNS must be a number from 1 to 1000, got '$MAX_CONNS'"
fi
[[ "$DB" =~ ^[A-Za-z0-9_]+$ ]] || die "database name must match [A-Za-z0-9_]+, got '$DB'"

LINK="$PGB_HOME/$NAME"   # what users see; a directory, or a symlink to the /tmp fallback
BASE=""                  # the real directory, resolved by locate()

# --- the pgbouncer binary -------------------------------------------------------------------

PGB_BIN=""
find_pgbouncer() {
  local c
  for c in "$(command -v pgbouncer 2>/dev/null || true)" /usr/sbin/pgbouncer /usr/bin/pgbouncer \
    /usr/local/bin/pgbouncer; do
    if [[ -n "$c" && -x "$c" ]]; then PGB_BIN="$c"; return 0; fi
  done
  return 1
}

# The Debian package starts its own pgbouncer (port 6432, /etc/pgbouncer) unless policy-rc.d
# forbids it: forbid it for the install, and stop one that got started anyway.
install_pgbouncer() {
  local policy=/usr/sbin/policy-rc.d added=0 ok=1 pidfile=/run/postgresql/pgbouncer.pid pid
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# Temporary, by %s: do not start services while installing.\nexit 101\n' "$PROG" >"$policy"
    chmod 755 "$policy"
    added=1
  fi
  say "pgbouncer not found; installing it:"
  say "+ apt-get update && apt-get install -y pgbouncer"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >&2; }; then
    ok=0
  fi
  if ((added)); then rm -f "$policy"; fi
  ((ok)) || die "could not install pgbouncer"
  if [[ -s "$pidfile" ]]; then
    pid="$(tr -dc '0-9' <"$pidfile")"
    if [[ -n "$pid" ]] && is_pgbouncer "$pid"; then
      say "stopping the pgbouncer service the package started (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
    fi
  fi
}

need_pgbouncer() {
  find_pgbouncer && return 0
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    install_pgbouncer
    find_pgbouncer && return 0
  fi
  die "pgbouncer not found. Install it, e.g. on Debian/Ubuntu: sudo apt-get install -y pgbouncer
  (macOS: brew install pgbouncer), or put it on PATH."
}

pgbouncer_version() {  # e.g. 1.18.0
  "$PGB_BIN" --version 2>/dev/null | sed -nE '1s/^[Pp]g[Bb]ouncer ([0-9]+\.[0-9]+(\.[0-9]+)?).*/\1/p'
}

version_at_least() {  # version_at_least HAVE MAJOR MINOR
  local major minor rest
  IFS=. read -r major minor rest <<<"$1"
  [[ -n "$major" && -n "$minor" ]] || return 1
  ((major > $2 || (major == $2 && minor >= $3)))
}

psql_bin() {
  local d
  if command -v psql >/dev/null 2>&1; then command -v psql; return 0; fi
  for d in /usr/lib/postgresql/*/bin; do
    if [[ -x "$d/psql" ]]; then echo "$d/psql"; return 0; fi
  done
  return 1
}

# --- the cluster's password -----------------------------------------------------------------

pg_password() {
  local file="$PG_HOME/$PG_NAME/password"
  [[ -s "$file" ]] ||
    die "no password for the cluster $PG_NAME ($file); run 'scripts/pg.sh start $PG_NAME $PG_PORT' first"
  tr -d '\n' <"$file"
}

# --- where the bouncer lives ------------------------------------------------------------------

ensure_base() {
  locate && return 0
  make_base
  chmod 700 "$BASE"
  give "$BASE"
}

# --- process state ----------------------------------------------------------------------------

is_pgbouncer() {  # is_pgbouncer PID: alive and a pgbouncer
  local comm
  kill -0 "$1" 2>/dev/null || return 1
  comm="$(ps -p "$1" -o comm= 2>/dev/null || true)"
  [[ "$comm" == pgbouncer* ]]
}

running_pid() {  # prints the pid when our pgbouncer runs; returns 1 otherwise
  local pid
  [[ -n "$BASE" && -s "$BASE/pgbouncer.pid" ]] || return 1
  pid="$(tr -dc '0-9' <"$BASE/pgbouncer.pid")"
  if [[ -n "$pid" ]] && is_pgbouncer "$pid"; then echo "$pid"; else return 1; fi
}

configured_port() {
  sed -nE 's/^listen_port = ([0-9]+)$/\1/p' "$BASE/pgbouncer.ini" 2>/dev/null
}

# --- configuration ----------------------------------------------------------------------------

write_config() {
  local password="$1" version extra=""
  version="$(pgbouncer_version)"
  # max_prepared_statements exists from 1.21 (protocol-level prepared statements in transaction
  # mode). 0 keeps them unsupported, as in the versions before: nothing may rely on them.
  if version_at_least "$version" 1 21; then extra="max_prepared_statements = 0"; fi
  (umask 077 && printf '"postgres" "%s"\n' "$password" >"$BASE/userlist.txt.tmp")
  give "$BASE/userlist.txt.tmp"
  mv "$BASE/userlist.txt.tmp" "$BASE/userlist.txt"
  cat >"$BASE/pgbouncer.ini.tmp" <<EOF
; Written by scripts/pgbouncer.sh on every start; edits are lost.
; PgBouncer ${version:-unknown}; in front of scripts/pg.sh cluster $PG_NAME (127.0.0.1:$PG_PORT).
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
pidfile = $BASE/pgbouncer.pid
logfile = $BASE/pgbouncer.log
auth_type = scram-sha-256
auth_file = $BASE/userlist.txt
admin_users = postgres
stats_users = postgres
pool_mode = transaction
default_pool_size = $MAX_CONNS
min_pool_size = 0
reserve_pool_size = 0
max_db_connections = $MAX_CONNS
max_user_connections = $MAX_CONNS
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits,options,application_name
server_tls_sslmode = disable
; Reconnect to a restarted cluster after 1 s rather than the default 15 s.
server_login_retry = 1
$extra
EOF
  give "$BASE/pgbouncer.ini.tmp"
  chmod 600 "$BASE/pgbouncer.ini.tmp"
  mv "$BASE/pgbouncer.ini.tmp" "$BASE/pgbouncer.ini"
}

# Logs in to the admin console: proves that this bouncer (not something else) answers on PORT.
answers() {
  local psql
  psql="$(psql_bin)" || return 1
  PGPASSWORD="$1" PGCONNECT_TIMEOUT=2 "$psql" -X -q -tA \
    "host=127.0.0.1 port=$PORT user=postgres dbname=pgbouncer sslmode=disable" \
    -c 'SHOW VERSION' >/dev/null 2>&1
}

# --- commands ---------------------------------------------------------------------------------

cmd_start() {
  local password pid p i
  need_pgbouncer
  password="$(pg_password)"
  if ! "$ROOT/scripts/pg.sh" status "$PG_NAME" "$PG_PORT" >/dev/null 2>&1; then
    say "warning: the cluster $PG_NAME is not running on $PG_PORT; clients will fail until 'scripts/pg.sh start $PG_NAME $PG_PORT'"
  fi
  lock
  ensure_base
  if pid="$(running_pid)"; then
    p="$(configured_port)"
    [[ "$p" == "$PORT" ]] ||
      die "pgbouncer $NAME is already running on port $p, not $PORT; stop it first ('$PROG stop $NAME $p')"
    write_config "$password"
    kill -HUP "$pid"   # reread pgbouncer.ini and userlist.txt
    echo "pgbouncer $NAME already running on 127.0.0.1:$PORT (configuration reloaded)"
    return 0
  fi
  rm -f "$BASE/pgbouncer.pid"
  write_config "$password"
  touch "$BASE/pgbouncer.log"
  give "$BASE/pgbouncer.log"
  # 9>&-: the daemon must not inherit the lock. What it says before daemonizing (a configuration
  # error, say) goes to startup.log.
  if ! as_run "$PGB_BIN" -d "$BASE/pgbouncer.ini" >"$BASE/startup.log" 2>&1 9>&-; then
    say "pgbouncer $NAME failed to start:"
    cat "$BASE/startup.log" >&2
    tail -n 20 "$BASE/pgbouncer.log" >&2 || true
    exit 1
  fi
  for ((i = 0; i < 100; i++)); do
    if running_pid >/dev/null && answers "$password"; then
      echo "pgbouncer $NAME running on 127.0.0.1:$PORT (transaction pooling, at most $MAX_CONNS server connections to 127.0.0.1:$PG_PORT)"
      return 0
    fi
    if ((i > 5)) && ! running_pid >/dev/null; then break; fi
    sleep 0.1
  done
  say "pgbouncer $NAME did not come up on 127.0.0.1:$PORT; last lines of $LINK/pgbouncer.log:"
  tail -n 20 "$BASE/pgbouncer.log" >&2 || true
  if pid="$(running_pid)"; then kill -TERM "$pid" 2>/dev/null || true; fi
  exit 1
}

cmd_stop() {
  local pid i
  locate || return 0
  if pid="$(running_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true   # SIGTERM: immediate shutdown
    for ((i = 0; i < 100; i++)); do
      is_pgbouncer "$pid" || break
      sleep 0.1
    done
    if is_pgbouncer "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$BASE/pgbouncer.pid"
    echo "pgbouncer $NAME stopped"
  fi
}

cmd_status() {
  local p
  locate || { echo "pgbouncer $NAME not initialized"; return 1; }
  if running_pid >/dev/null; then
    p="$(configured_port)"
    if [[ "$p" == "$PORT" ]]; then
      echo "pgbouncer $NAME running on 127.0.0.1:$PORT"
      return 0
    fi
    echo "pgbouncer $NAME running on port $p, not $PORT"
    return 1
  fi
  echo "pgbouncer $NAME not running"
  return 1
}

cmd_url() {
  printf 'postgres://postgres:%s@127.0.0.1:%s/%s?sslmode=disable\n' "$(pg_password)" "$PORT" "$DB"
}

cmd_destroy() {
  cmd_stop
  lock
  if locate; then
    rm -rf "$BASE"
    if [[ -L "$LINK" ]]; then rm -f "$LINK"; fi
  fi
  rm -f "$PGB_HOME/.lock-$NAME"
  echo "pgbouncer $NAME destroyed"
}

case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) cmd_url ;;
  destroy) cmd_destroy ;;
esac
