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
# Every test but the lab suites (the same package selection as the build,
# so nothing is rebuilt); test-driver suites start their own nats-server
# per test and may run in parallel.
cargo test --workspace -- --skip lab_
# The lab suites: one lab each, one at a time (cargo runs test binaries in
# turn; one thread inside each).
cargo test --workspace -- --test-threads=1 --exact \
    lab_migration_suite lab_maintenance_suite lab_rolling_suite lab_trust_suite \
    lab_security_suite lab_faults_suite
echo "all tests passed in $(( $(date +%s) - started )) s"
