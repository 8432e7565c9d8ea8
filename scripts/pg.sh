#!/usr/bin/env bash
# A throwaway, project-local PostgreSQL cluster for development and tests.
#
#   scripts/pg.sh start   NAME PORT          init on first use, start, create database "auth"
#   scripts/pg.sh stop    NAME PORT          fast shutdown (succeeds when not running)
#   scripts/pg.sh status  NAME PORT          exit 0 when running on PORT, 1 otherwise
#   scripts/pg.sh url     NAME PORT [DB]     print the DATABASE_URL (default DB: auth)
#   scripts/pg.sh psql    NAME PORT [ARGS]   psql against the cluster's "auth" database
#   scripts/pg.sh ca      NAME PORT          print the TLS CA certificate's path (after a TLS start)
#   scripts/pg.sh destroy NAME PORT          stop and delete everything of NAME
#
#   PG_TLS=1 scripts/pg.sh start NAME PORT   start with TLS on (see below); without it, TLS is off
#
# Everything lives in .local/pg/NAME/ (gitignored): data/, run/ (unix socket), postgres.log and
# password (the "postgres" role's password, mode 600). The server listens on 127.0.0.1 only;
# TCP logins need that password (scram-sha-256), so DATABASE_URL looks like a real one:
#   postgres://postgres:PASSWORD@127.0.0.1:PORT/auth?sslmode=disable
# Durability is switched off (fsync, full_page_writes, synchronous_commit): it is throwaway.
#
# TLS, opt-in (to reproduce Neon's conditions): with PG_TLS=1, start first creates, when any of
# them is missing, .local/pg/NAME/tls/ with a throwaway CA (ca.crt, ca.key) and a server
# certificate signed by it (server.crt, server.key) for the DNS name "localhost" only: it holds
# no IP address, so verifying the host name fails when connecting to 127.0.0.1. The server then
# runs with ssl=on and listens on ::1 as well (where "localhost" may resolve first). Plaintext
# logins keep working (the `url` above); TLS ones, channel binding included, look like:
#   postgres://postgres:PASSWORD@localhost:PORT/auth?sslmode=verify-full&sslrootcert=CA&channel_binding=require
# with CA the path `ca` prints. sslmode=verify-ca (chain only) passes with 127.0.0.1 as well.
# Without PG_TLS, start runs the server with ssl off, as it always did.
#
# PostgreSQL refuses to run as root. Run as root, the server runs as the existing user
# "postgres" (else "nobody"); nothing system-wide is created. If that user cannot reach
# .local/pg (say the repo is under /root, mode 700), the cluster is kept in a private directory
# under /tmp and .local/pg/NAME is a symlink to it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
PG_HOME="$ROOT/.local/pg"
PROG="scripts/pg.sh"
STATE_HOME="$PG_HOME"
# shellcheck source=scripts/unprivileged.sh
source "$ROOT/scripts/unprivileged.sh"

# The environment must not redirect our own connections elsewhere.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE PGSERVICE \
  PGSERVICEFILE PGOPTIONS PGSSLMODE PGDATA PGTARGETSESSIONATTRS PGCONNECT_TIMEOUT

usage() {
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[[ $# -ge 3 ]] || usage
CMD="$1"; NAME="$2"; PORT="$3"; shift 3
case "$CMD" in start | stop | status | url | psql | ca | destroy) ;; *) usage ;; esac
[[ "$NAME" =~ ^[A-Za-z0-9_-]+$ ]] || die "cluster name must match [A-Za-z0-9_-]+, got '$NAME'"
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || ((PORT < 1024 || PORT > 65535)); then
  die "port must be a number from 1024 to 65535, got '$PORT'"
fi
TLS=0
if [[ "$CMD" == start ]]; then
  case "${PG_TLS:-}" in
    "" | 0) ;;
    1) TLS=1 ;;
    *) die "PG_TLS must be 1 (TLS on) or 0/unset (TLS off), got '$PG_TLS'" ;;
  esac
fi

LINK="$PG_HOME/$NAME"   # what users see; a directory, or a symlink to the /tmp fallback
BASE=""                 # the real directory, resolved by locate()

# --- server binaries ------------------------------------------------------------------------

BINDIR=""
find_bindir() {
  local d candidates=()
  if command -v pg_config >/dev/null 2>&1; then candidates+=("$(pg_config --bindir 2>/dev/null || true)"); fi
  candidates+=(/usr/lib/postgresql/15/bin)
  # Another packaged major version, newest first, then whatever is on PATH (Homebrew, Nix, ...).
  while IFS= read -r d; do candidates+=("$d"); done < <(
    printf '%s\n' /usr/lib/postgresql/*/bin | grep -v '\*' | sort -t/ -k5,5nr)
  if command -v initdb >/dev/null 2>&1; then candidates+=("$(dirname "$(command -v initdb)")"); fi
  for d in "${candidates[@]}"; do
    if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then BINDIR="$d"; return 0; fi
  done
  return 1
}

need_bindir() {
  find_bindir && return 0
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "PostgreSQL server binaries not found; installing them:"
    say "+ apt-get update && apt-get install -y postgresql-15"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >&2; }; then
      die "could not install postgresql-15 (this distribution may not carry it: see https://www.postgresql.org/download/linux/ for the PGDG apt repository)"
    fi
    find_bindir && return 0
  fi
  die "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found.
  Install PostgreSQL 15, e.g. on Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y postgresql-15
  (or put a directory holding initdb on PATH)."
}

psql_bin() {
  if [[ -n "$BINDIR" && -x "$BINDIR/psql" ]]; then echo "$BINDIR/psql"
  elif command -v psql >/dev/null 2>&1; then command -v psql
  else die "psql not found (install postgresql-client-15)"
  fi
}

# --- where the cluster lives ----------------------------------------------------------------

# Creates the cluster directory (not the data) and its password if missing; sets BASE.
ensure_base() {
  locate && [[ -s "$BASE/password" ]] && return 0
  if [[ -z "$BASE" ]]; then
    make_base
    chmod 711 "$BASE"
  fi
  if [[ ! -s "$BASE/password" ]]; then
    [[ ! -e "$BASE/data/PG_VERSION" ]] ||
      die "$LINK/password is missing, so the cluster's password is unknown; run '$PROG destroy $NAME $PORT'"
    local pw
    pw="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    (umask 077 && printf '%s\n' "$pw" >"$BASE/password.tmp")
    mv "$BASE/password.tmp" "$BASE/password"
  fi
}

password() { tr -d '\n' <"$BASE/password"; }

url_for() {
  printf 'postgres://postgres:%s@127.0.0.1:%s/%s?sslmode=disable\n' "$(password)" "$PORT" "$1"
}

# --- server state ---------------------------------------------------------------------------

is_running() {  # running at all (any port)
  [[ -n "$BASE" && -f "$BASE/data/PG_VERSION" ]] || return 1
  as_run "$BINDIR/pg_ctl" status -D "$BASE/data" >/dev/null 2>&1
}

running_port() {  # line 4 of postmaster.pid is the port
  as_run sed -n 4p "$BASE/data/postmaster.pid" 2>/dev/null | tr -d '[:space:]'
}

write_settings() {
  local q="'" qq="''" run="$BASE/run" listen="127.0.0.1" crt="$BASE/tls/server.crt" key="$BASE/tls/server.key"
  if ((TLS)) && has_ipv6_loopback; then listen="127.0.0.1,::1"; fi
  cat >"$BASE/data/pg.sh.conf" <<EOF
# Written by scripts/pg.sh on every start; edits are lost.
listen_addresses = '$listen'
port = $PORT
unix_socket_directories = '${run//$q/$qq}'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  if ((TLS)); then
    cat >>"$BASE/data/pg.sh.conf" <<EOF
ssl = on
ssl_cert_file = '${crt//$q/$qq}'
ssl_key_file = '${key//$q/$qq}'
EOF
  fi
  give "$BASE/data/pg.sh.conf"
  chmod 600 "$BASE/data/pg.sh.conf"
}

# --- TLS (PG_TLS=1) --------------------------------------------------------------------------

# Whether ::1 can be listened on: Linux says so in /proc; elsewhere assume it can (a failed bind
# of ::1 is only a warning in postgres.log as long as 127.0.0.1 works).
has_ipv6_loopback() {
  if [[ -d /proc/net ]]; then
    [[ -r /proc/net/if_inet6 ]] && grep -Eq '^0{31}1 .* lo$' /proc/net/if_inet6
  fi
}

# Creates the throwaway CA and the server certificate in $BASE/tls when missing (the CA is kept
# when only the server's files are gone). Sets NEW_CERTS=1 when it wrote new server files.
NEW_CERTS=0
ensure_tls() {
  local dir="$BASE/tls"
  if [[ -s "$dir/ca.crt" && -s "$dir/ca.key" && -s "$dir/server.crt" && -s "$dir/server.key" ]]; then
    return 0
  fi
  command -v openssl >/dev/null 2>&1 || die "PG_TLS=1 needs the openssl command (e.g. apt-get install -y openssl)"
  mkdir -p "$dir"
  chmod 755 "$dir"
  local log="$dir/openssl.log" serial what="a server certificate for 'localhost'"
  : >"$log"
  if [[ ! -s "$dir/ca.crt" || ! -s "$dir/ca.key" ]]; then
    what="a throwaway CA and $what"
    rm -f "$dir/server.crt" "$dir/server.key"
    cat >"$dir/ca.cnf" <<EOF
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = scripts/pg.sh $NAME throwaway CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    if ! (umask 077 && openssl req -x509 -new -config "$dir/ca.cnf" -newkey rsa:2048 -nodes -sha256 \
      -days 3650 -keyout "$dir/ca.key.tmp" -out "$dir/ca.crt.tmp") >>"$log" 2>&1; then
      cat "$log" >&2
      die "could not create the CA certificate (openssl output above)"
    fi
    chmod 600 "$dir/ca.key.tmp"
    chmod 644 "$dir/ca.crt.tmp"
    mv "$dir/ca.key.tmp" "$dir/ca.key"
    mv "$dir/ca.crt.tmp" "$dir/ca.crt"
    rm -f "$dir/ca.cnf"
  fi
  cat >"$dir/server.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
  serial="0x$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  if ! { (umask 077 && openssl req -new -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$dir/server.key.tmp" -out "$dir/server.csr") >>"$log" 2>&1 &&
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
      -set_serial "$serial" -sha256 -days 3650 -extfile "$dir/server.ext" \
      -out "$dir/server.crt.tmp" >>"$log" 2>&1; }; then
    cat "$log" >&2
    rm -f "$dir/server.key.tmp" "$dir/server.crt.tmp" "$dir/server.csr"
    die "could not create the server certificate (openssl output above)"
  fi
  # The server reads its key as RUN_USER and insists on it being private (mode 600, its owner).
  chmod 600 "$dir/server.key.tmp"
  chmod 644 "$dir/server.crt.tmp"
  give "$dir/server.key.tmp" "$dir/server.crt.tmp"
  mv "$dir/server.key.tmp" "$dir/server.key"
  mv "$dir/server.crt.tmp" "$dir/server.crt"
  rm -f "$dir/server.csr" "$dir/server.ext" "$log"
  NEW_CERTS=1
  say "created $what in $LINK/tls"
}

init_cluster() {
  local log="$BASE/initdb.log"
  mkdir -p "$BASE/data" "$BASE/run"
  chmod 700 "$BASE/data" "$BASE/run"
  : >"$BASE/postgres.log"
  : >"$log"
  give "$BASE/data" "$BASE/run" "$BASE/postgres.log" "$log"
  # initdb reads the password as RUN_USER, so hand it a copy it owns, removed right after.
  (umask 077 && password >"$BASE/pwfile.tmp")
  give "$BASE/pwfile.tmp"
  if ! as_run "$BINDIR/initdb" -D "$BASE/data" -U postgres --pwfile="$BASE/pwfile.tmp" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-locale --no-sync \
    >"$log" 2>&1; then
    rm -f "$BASE/pwfile.tmp"
    cat "$log" >&2
    rm -rf "$BASE/data"
    die "initdb failed (output above)"
  fi
  rm -f "$BASE/pwfile.tmp"
  printf "\ninclude_if_exists = 'pg.sh.conf'\n" | as_run tee -a "$BASE/data/postgresql.conf" >/dev/null
}

check_version() {
  local have want
  have="$(cat "$BASE/data/PG_VERSION" 2>/dev/null || as_run cat "$BASE/data/PG_VERSION")"
  want="$("$BINDIR/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/')"
  [[ "$have" == "$want" ]] ||
    die "cluster $NAME was created by PostgreSQL $have but $BINDIR is $want; run '$PROG destroy $NAME $PORT' to start over"
}

server_ssl() {  # "on" or "off", asked over the unix socket
  as_run "$(psql_bin)" -X -q -h "$BASE/run" -p "$PORT" -U postgres -d postgres -tA -c 'show ssl'
}

ensure_db() {
  local db="$1" psql
  psql="$(psql_bin)"
  if [[ -z "$(as_run "$psql" -X -q -h "$BASE/run" -p "$PORT" -U postgres -d postgres -tA \
    -c "select 1 from pg_database where datname = '$db'")" ]]; then
    as_run "$psql" -X -q -v ON_ERROR_STOP=1 -h "$BASE/run" -p "$PORT" -U postgres -d postgres \
      -c "create database \"$db\"" >/dev/null
  fi
}

# --- commands -------------------------------------------------------------------------------

cmd_start() {
  need_bindir
  lock
  ensure_base
  if [[ ! -f "$BASE/data/PG_VERSION" ]]; then
    init_cluster
  else
    check_version
  fi
  if ((TLS)); then ensure_tls; fi
  if is_running; then
    local p
    p="$(running_port)"
    [[ "$p" == "$PORT" ]] ||
      die "postgres $NAME is already running on port $p, not $PORT; stop it first ('$PROG stop $NAME $p')"
    if ((TLS)); then
      [[ "$(server_ssl)" == on ]] ||
        die "postgres $NAME is already running without TLS; stop it first ('$PROG stop $NAME $PORT'), then start it with PG_TLS=1"
      # The server rereads its certificate and key on reload.
      if ((NEW_CERTS)); then as_run "$BINDIR/pg_ctl" reload -D "$BASE/data" >/dev/null; fi
    fi
    ensure_db auth
    if ((TLS)); then
      echo "postgres $NAME already running on 127.0.0.1:$PORT with TLS (CA: $BASE/tls/ca.crt)"
    else
      echo "postgres $NAME already running on 127.0.0.1:$PORT"
    fi
    return 0
  fi
  write_settings
  # 9>&-: the server must not inherit the lock, or it would hold it for as long as it runs.
  if ! as_run "$BINDIR/pg_ctl" start -w -t 60 -D "$BASE/data" -l "$BASE/postgres.log" \
    >/dev/null 2>&1 9>&-; then
    say "postgres $NAME failed to start; last lines of $LINK/postgres.log:"
    tail -n 20 "$BASE/postgres.log" >&2 || true
    exit 1
  fi
  ensure_db auth
  if ((TLS)); then
    echo "postgres $NAME running on 127.0.0.1:$PORT with TLS (CA: $BASE/tls/ca.crt)"
  else
    echo "postgres $NAME running on 127.0.0.1:$PORT"
  fi
}

cmd_stop() {
  locate || return 0
  need_bindir
  if is_running; then
    as_run "$BINDIR/pg_ctl" stop -w -m fast -D "$BASE/data" >/dev/null
    echo "postgres $NAME stopped"
  fi
}

cmd_status() {
  locate || { echo "postgres $NAME not initialized"; return 1; }
  find_bindir || { echo "postgres $NAME: no server binaries"; return 1; }
  if is_running; then
    local p
    p="$(running_port)"
    if [[ "$p" == "$PORT" ]]; then
      echo "postgres $NAME running on 127.0.0.1:$PORT"
      return 0
    fi
    echo "postgres $NAME running on port $p, not $PORT"
    return 1
  fi
  echo "postgres $NAME not running"
  return 1
}

cmd_url() {
  local db="${1:-auth}"
  [[ "$db" =~ ^[A-Za-z0-9_]+$ ]] || die "database name must match [A-Za-z0-9_]+, got '$db'"
  # Creates the password (not the cluster) if needed, so the URL is known before the first start.
  if ! { locate && [[ -s "$BASE/password" ]]; }; then
    lock
    ensure_base
  fi
  url_for "$db"
}

cmd_psql() {
  if ! { locate && [[ -s "$BASE/password" ]]; }; then
    die "postgres $NAME is not initialized; run '$PROG start $NAME $PORT'"
  fi
  find_bindir || true
  exec "$(psql_bin)" "$(url_for auth)" "$@"
}

cmd_ca() {
  if ! { locate && [[ -s "$BASE/tls/ca.crt" ]]; }; then
    die "postgres $NAME has no TLS certificates; run 'PG_TLS=1 $PROG start $NAME $PORT'"
  fi
  echo "$BASE/tls/ca.crt"
}

cmd_destroy() {
  cmd_stop
  lock
  if locate; then
    rm -rf "$BASE"
    if [[ -L "$LINK" ]]; then rm -f "$LINK"; fi
  fi
  rm -f "$PG_HOME/.lock-$NAME"
  echo "postgres $NAME destroyed"
}

case "$CMD" in
  start) [[ $# -eq 0 ]] || usage; cmd_start ;;
  stop) [[ $# -eq 0 ]] || usage; cmd_stop ;;
  status) [[ $# -eq 0 ]] || usage; cmd_status ;;
  url) [[ $# -le 1 ]] || usage; cmd_url "$@" ;;
  psql) cmd_psql "$@" ;;
  ca) [[ $# -eq 0 ]] || usage; cmd_ca ;;
  destroy) [[ $# -eq 0 ]] || usage; cmd_destroy ;;
  *) usage ;;
esac
