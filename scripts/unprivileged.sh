# Sourced by pg.sh and pgbouncer.sh: what both need to run a throwaway server from the
# project's .local/ folder. The caller sets PROG, NAME, LINK (.local/…/NAME) and STATE_HOME
# (the .local/… folder holding LINK and the lock files).
# shellcheck shell=bash

die() { echo "$PROG: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }

# PostgreSQL and PgBouncer refuse to run as root: as root, run them as the existing user
# "postgres" (else "nobody"); nothing system-wide is created.
RUN_USER=""
if [[ $EUID -eq 0 ]]; then
  if id -u postgres >/dev/null 2>&1; then RUN_USER=postgres
  elif id -u nobody >/dev/null 2>&1; then RUN_USER=nobody
  else die "running as root, but neither user 'postgres' nor 'nobody' exists to run the server"
  fi
  if command -v runuser >/dev/null 2>&1; then
    as_run() { (cd / && runuser -u "$RUN_USER" -- "$@"); }
  elif command -v setpriv >/dev/null 2>&1; then
    as_run() { (cd / && setpriv --reuid="$RUN_USER" --regid="$(id -g "$RUN_USER")" --init-groups -- "$@"); }
  else
    die "running as root, but neither runuser nor setpriv is available to drop privileges"
  fi
  give() { chown "$RUN_USER:$(id -g "$RUN_USER")" "$@"; }
else
  as_run() { "$@"; }
  give() { :; }
fi

mkdir_public() {  # mkdir DIR mode 755 if missing (a umask of 077 would hide it from RUN_USER)
  [[ -d "$1" ]] || { mkdir -p "$1" && chmod 755 "$1"; }
}

# Sets BASE when LINK exists (a directory, or a live symlink to the /tmp fallback); returns 1
# otherwise.
locate() {
  if [[ -L "$LINK" && ! -d "$LINK" ]]; then
    rm -f "$LINK"   # the /tmp fallback vanished (reboot): what lived there is gone
    return 1
  fi
  [[ -d "$LINK" ]] || return 1
  BASE="$(cd "$LINK" && pwd -P)"
}

# Creates LINK's directory if missing and sets BASE. When RUN_USER cannot traverse to the repo
# (e.g. /root is 700), the directory is a private, unguessable one under /tmp that LINK points at.
make_base() {
  mkdir_public "$ROOT/.local"
  mkdir_public "$STATE_HOME"
  if [[ -n "$RUN_USER" ]] && ! as_run test -x "$STATE_HOME"; then
    BASE="$(mktemp -d "/tmp/${PROG##*/}-$NAME.XXXXXXXX")"
    ln -s "$BASE" "$LINK"
    say "user '$RUN_USER' cannot reach $STATE_HOME; $NAME kept in $BASE (linked from $LINK)"
  else
    mkdir -p "$LINK"
    BASE="$(cd "$LINK" && pwd -P)"
  fi
}

# Serializes the commands that create or start one NAME (parallel make targets may race).
lock() {
  mkdir_public "$ROOT/.local"
  mkdir_public "$STATE_HOME"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$STATE_HOME/.lock-$NAME"
    flock -w 120 9 || die "timed out waiting for $STATE_HOME/.lock-$NAME (another $PROG on $NAME?)"
  fi
}
