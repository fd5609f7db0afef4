#!/usr/bin/env bash
# Mintguard's full test suite: format and lint checks, a build of every
# target, then every test (unit, integration, doc, bench smoke runs) with the
# real peers from tests/peers.sh running. A missing peer fails the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
# No import circles among the broker's modules (and the layout bottom-up).
python3 tests/import_circles.py
cargo build --workspace --all-targets --locked
cargo clippy --workspace --all-targets --locked -- -D warnings

# The README's first command must keep working.
./examples/quickstart.sh >/dev/null

# Each criterion bench runs once in test mode (correctness, not timing);
# then the whole workspace's tests.
tests/peers.sh bash -c 'cargo test --workspace --benches --locked && cargo test --workspace --locked'

# A short coverage-guided fuzzing run of every parser of untrusted input.
tests/fuzz.sh 30
