#!/usr/bin/env bash
# One command for every test: installs the dependencies (deploy/setup.sh),
# checks formatting and lints, builds once, then runs unit, property and
# integration tests (real nats-server, libvirt test driver), then the lab
# suites (root + KVM/TCG; they skip with a reason outside CI when they can't
# run, and fail under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
started=$(date +%s)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
# Lab suites share one lab each and must not overlap: one test binary at a
# time (cargo's default) and one test thread inside lab binaries.
cargo test --workspace --exclude nodemaint-tests
# Integration suites on the test driver (each test has its own nats-server).
for suite in tests/tests/*.rs; do
    name=$(basename "$suite" .rs)
    [[ $name == lab_* ]] && continue
    cargo test -p nodemaint-tests --test "$name"
done
for suite in tests/tests/lab_*.rs; do
    [[ -e $suite ]] || continue
    name=$(basename "$suite" .rs)
    cargo test -p nodemaint-tests --test "$name" -- --test-threads=1
done
echo "all tests passed in $(( $(date +%s) - started )) s"
