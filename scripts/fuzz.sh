#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers of untrusted input (docs/fuzzing.md): builds the
# cargo-fuzz targets in fuzz/, runs each for FUZZ_SECONDS (default 60), prints one line per
# target and fails if any target crashed. FUZZ_TARGETS="email bearer" picks targets.
#
# The committed seeds (fuzz/corpus/<target>/) are read, never written: what the fuzzer finds
# goes to fuzz/grown/<target>/, a crash to fuzz/artifacts/<target>/ (both gitignored).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
CARGO_FUZZ_VERSION=0.13.2
TOOLS="$ROOT/.tools"
CARGO_FUZZ="$TOOLS/bin/cargo-fuzz"
# cargo fuzz passes nightly-only flags (-Zsanitizer, sancov); RUSTC_BOOTSTRAP lets the stable
# toolchain the project pins accept them, so no second toolchain is needed.
export RUSTC_BOOTSTRAP=1
# No sanitizer: shared forbids unsafe code, so what is fuzzed here is logic, and without ASan
# a target runs about twice as many inputs in its time. One set of flags for build and run, or
# `cargo fuzz run` would rebuild.
FLAGS=(-s none --codegen-units 16)

if [[ ! -x "$CARGO_FUZZ" ]] || ! "$CARGO_FUZZ" --version | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$TOOLS"
fi

read -r -a targets <<<"${FUZZ_TARGETS:-$("$CARGO_FUZZ" list | tr '\n' ' ')}"
for t in "${targets[@]}"; do
    [[ -f "fuzz_targets/$t.rs" ]] || { echo "fuzz: no target '$t' (see: $CARGO_FUZZ list)" >&2; exit 2; }
done

"$CARGO_FUZZ" build "${FLAGS[@]}" >&2

# Options per target: zxcvbn costs up to ~160 ms on a 128-code-point password, so the password
# target's inputs are kept near that length and given a longer per-input timeout.
options() {
    case "$1" in
        password) echo "-max_len=600 -timeout=10" ;;
        json_body) echo "-max_len=4096" ;;
        *) echo "" ;;
    esac
}

logs="$ROOT/fuzz/target/fuzz-logs"
mkdir -p "$logs"
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "grown/$t" "artifacts/$t"
    log="$logs/$t.log"
    # shellcheck disable=SC2046 # the options are words
    if "$CARGO_FUZZ" run "${FLAGS[@]}" "$t" "grown/$t" "corpus/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        $(options "$t") >"$log" 2>&1; then
        status=ok
    else
        status="CRASHED (see $log and fuzz/artifacts/$t/)"
        failed+=("$t")
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
    ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
    corp=$(grep -o 'corp: [0-9]*/[0-9A-Za-z]*' <<<"$last" | cut -d' ' -f2 || true)
    # libFuzzer's closing "Done N runs in S second(s)"; a crash stops the run before it.
    secs=$(grep -o 'runs in [0-9]* second' "$log" | grep -o '[0-9]*' | tail -1 || true)
    summary+=("$(printf 'fuzz %-16s %s: %s runs in %s s, cov %s, ft %s, corpus %s' \
        "$t" "$status" "${runs:-?}" "${secs:-<$FUZZ_SECONDS}" "${cov:-?}" "${ft:-?}" "${corp:-?}")")
    echo "${summary[-1]}"
done

if ((${#failed[@]})); then
    echo "fuzz: crashed: ${failed[*]} — reproduce with: cd fuzz && RUSTC_BOOTSTRAP=1 $CARGO_FUZZ run ${FLAGS[*]} <target> artifacts/<target>/<file>" >&2
    exit 1
fi
