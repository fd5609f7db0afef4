#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of the parsers that take
# untrusted input: the agent's request parsing, CI tokens before their
# signature is checked, the canonical JSON writer against serde_jcs, broker
# configuration loading and the exposure-graph loader (fuzz/fuzz_targets).
#
#   tests/fuzz.sh [SECONDS_PER_TARGET]   # default 30; CI's short run
#
# Needs a nightly toolchain and cargo-fuzz; both are installed when missing.
# The seeds in fuzz/seeds/ start each run; what a run finds new is kept in
# the (uncommitted) fuzz/corpus/. A crash fails the script and leaves its
# input under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
export CARGO_TARGET_DIR="${MINTGUARD_FUZZ_TARGET_DIR:-$HOME/.cache/mintguard-fuzz-target}"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cd fuzz
targets=(agent_request ci_token jcs config exposure_graph)
cargo +nightly fuzz build -O 2>&1 | tail -n 3
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${seconds}s"
  set +e
  out=$(cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 2>&1)
  rc=$?
  set -e
  grep -E '^(stat::number_of_executed_runs|stat::new_units_added|SUMMARY)|ERROR|panicked' <<<"$out" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 40 <<<"$out" >&2
    echo "fuzz: $t failed (exit $rc); the input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
