#!/usr/bin/env bash
# Supply-chain check (`make deny`, and a step of `make test`): cargo-deny's licenses, bans,
# sources and advisories over the root workspace and tools/lambda-bench (its own workspace and
# Cargo.lock), with the RustSec database read offline from the snapshot beside the repo.
# Policy: deny.toml. Why and how to refresh the database: docs/supply-chain.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

DENY_VERSION=0.20.2
DENY="$ROOT/.tools/bin/cargo-deny"
SNAPSHOT_DIR="${ADVISORY_DB_SNAPSHOT:-$ROOT/../shared/rustsec-advisory-db}"
# cargo-deny's directory for deny.toml's db-url under its db-path: "<last path segment>-<xxhash64
# of the url>" (src/advisories/helpers/db.rs). If the url changes, so must this; a wrong name is
# not a silent pass: cargo-deny fails when it cannot open the database.
DB_DIR="$ROOT/target/advisory-db/advisory-db-3157b0e258782691"

# Pinned and project-local, so a fresh clone needs nothing installed by hand (about 2 minutes
# of build on 2 cores).
if [[ "$("$DENY" --version 2>/dev/null || true)" != "cargo-deny $DENY_VERSION" ]]; then
  echo "installing cargo-deny $DENY_VERSION into .tools/"
  cargo install cargo-deny --version "$DENY_VERSION" --locked --root "$ROOT/.tools" --quiet
fi

# The snapshot is files only; cargo-deny wants a git repository and dates the database by its
# HEAD commit (or the HEAD file's mtime, whichever is newer). Both are set to the upstream
# commit's date from SNAPSHOT, so maximum-db-staleness measures the data's real age, not the
# time of the copy. Rebuilt whenever SNAPSHOT changes.
[[ -f "$SNAPSHOT_DIR/SNAPSHOT" ]] || { echo "no advisory database snapshot at $SNAPSHOT_DIR" >&2; exit 1; }
commit="$(awk '$1 == "commit" { print $2 }' "$SNAPSHOT_DIR/SNAPSHOT")"
committed="$(awk '$1 == "committed" { print $2 }' "$SNAPSHOT_DIR/SNAPSHOT")"
[[ -n "$commit" && -n "$committed" ]] || { echo "$SNAPSHOT_DIR/SNAPSHOT names no commit and date" >&2; exit 1; }
if ! cmp -s "$SNAPSHOT_DIR/SNAPSHOT" "$DB_DIR/SNAPSHOT" || [[ ! -d "$DB_DIR/.git" ]]; then
  rm -rf "$DB_DIR"
  mkdir -p "$(dirname "$DB_DIR")"
  cp -R "$SNAPSHOT_DIR" "$DB_DIR"
  chmod -R u+w "$DB_DIR"
  (
    cd "$DB_DIR"
    export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
    export GIT_AUTHOR_NAME=snapshot GIT_AUTHOR_EMAIL=snapshot@localhost
    export GIT_COMMITTER_NAME=snapshot GIT_COMMITTER_EMAIL=snapshot@localhost
    export GIT_AUTHOR_DATE="$committed" GIT_COMMITTER_DATE="$committed"
    git init --quiet --initial-branch=main
    git add -A
    git commit --quiet --no-verify -m "RustSec advisory-db $commit (snapshot, files only)"
  )
fi
touch -d "$committed" "$DB_DIR/.git/HEAD"
age_days=$((($(date +%s) - $(date -d "$committed" +%s)) / 86400))
echo "advisory database: RustSec $commit of $committed, $age_days days old (deny.toml allows 180)"
if ((age_days > 90)); then
  echo "warning: the advisory database is over 90 days old; refresh it (docs/supply-chain.md)" >&2
fi

# The advisory database is never fetched (--offline), and neither is anything else: the crate
# graph comes from cargo metadata --offline, so every platform's crates must be in the local
# registry first; `cargo fetch` gets them from crates.io (a no-op once done). --locked: a
# Cargo.lock that does not match its manifests fails here instead of being rewritten.
check() {
  local name="$1"
  shift
  echo "cargo deny: $name"
  cargo fetch --locked --quiet "$@"
  "$DENY" --offline --locked --color "${DENY_COLOR:-auto}" "$@" --config "$ROOT/deny.toml" \
    check --show-stats advisories licenses bans sources
}

check "root workspace" --manifest-path "$ROOT/Cargo.toml"
check "tools/lambda-bench" --manifest-path "$ROOT/tools/lambda-bench/Cargo.toml"
