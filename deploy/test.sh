#!/usr/bin/env bash
# One command for every test: installs the dependencies (deploy/setup.sh --for test),
# checks formatting and lints, builds once, then runs unit, property and integration tests
# (real nats-server, libvirt test driver), then the lab suites (root + KVM/TCG; they skip
# with a reason outside CI when they can't run, and fail under CI=true). Prints the time of
# each phase, and at the end the count of tests passed, failed and skipped (ignored).
#
#   deploy/test.sh [--under-load]
#
#   --under-load  while the test suites run (not during setup, fmt, clippy and the build),
#                 keep every core busy with `stress-ng --cpu $(nproc)`, to shake out timing
#                 assumptions; the hog is stopped on every way out.
set -euo pipefail
cd "$(dirname "$0")/.."

under_load=0
for arg in "$@"; do
    case $arg in
        --under-load) under_load=1 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "test.sh: unknown argument '$arg' (usage: deploy/test.sh [--under-load])" >&2; exit 2 ;;
    esac
done

hog_pid=""
results=$(mktemp)
stop_hog() {
    [[ -n $hog_pid ]] || return 0
    pkill -TERM -P "$hog_pid" 2>/dev/null || true   # its workers, by parent pid
    kill -TERM "$hog_pid" 2>/dev/null || true
    wait "$hog_pid" 2>/dev/null || true
    hog_pid=""
}
# (SIGPIPE too: a signal to the whole group kills the `tee` that bash's own report of the
# killed test goes to. Ignored in cleanup itself, so that it runs to the end.)
cleanup() { trap '' PIPE; stop_hog; rm -f "$results"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

started=$(date +%s)
phase_name="" phase_start=$started summary=""
phase() {   # end the phase running (print its time), then start phase $1 (if any)
    local now; now=$(date +%s)
    if [[ -n $phase_name ]]; then
        echo "== $phase_name: $((now - phase_start)) s"
        summary+="${summary:+, }$phase_name $((now - phase_start)) s"
    fi
    phase_name=${1:-} phase_start=$now
    [[ -z $phase_name ]] || echo "== $phase_name ..."
}
# cargo test, its output also kept to count the results at the end. Not a pipe: a process a
# test left running with cargo's stdout would keep `tee` waiting; this script need not wait.
tees=()
cargo_test() { { cargo test "$@"; } > >(tee -a "$results") 2>&1; tees+=("$!"); }

phase setup
deploy/setup.sh --for test
export PATH="$HOME/.cargo/bin:$PATH"

phase fmt
cargo fmt --all -- --check
phase clippy
cargo clippy --workspace --all-targets -- -D warnings
phase build
cargo build --workspace --all-targets
phase tests
if ((under_load)); then
    command -v stress-ng >/dev/null || { echo "test.sh: --under-load needs stress-ng (deploy/setup.sh --for test)" >&2; exit 1; }
    # --timeout: a backstop should this script be killed without running its trap.
    # (Its output would only be the workers' "finished prematurely" when stopped.)
    stress-ng --cpu "$(nproc)" --timeout 90m --quiet >/dev/null 2>&1 &
    hog_pid=$!
    sleep 1
    kill -0 "$hog_pid" 2>/dev/null || { echo "test.sh: stress-ng did not start" >&2; exit 1; }
    echo "== under load: stress-ng --cpu $(nproc) (pid $hog_pid) until the suites end"
fi
# Every test but the lab suites (the same package selection as the build, so nothing is
# rebuilt); test-driver suites start their own nats-server per test and may run in parallel.
cargo_test --workspace -- --skip lab_
# The lab suites: one lab each, one at a time (cargo runs test binaries in turn; one thread
# inside each).
phase "lab suites"
# Labs take fixed namespaces and subnets: one lab user at a time on this machine
# (another checkout's test run waits here instead of clashing).
exec {lab_lock}>"${TMPDIR:-/tmp}/nodemaint-lab.lock"
flock "$lab_lock"
cargo_test --workspace -- --test-threads=1 --exact \
    lab_migration_suite lab_maintenance_suite lab_rolling_suite lab_trust_suite \
    lab_security_suite lab_faults_suite lab_evidence_suite
phase
stop_hog

load=""; ((under_load)) && load=", under load"
echo "all tests passed in $(( $(date +%s) - started )) s$load ($summary)"
# The closing count, over every `cargo test` binary and doc-test run above (once `tee` wrote
# the last lines: at once, unless something still holds its pipe).
for t in "${tees[@]}"; do
    for _ in {1..50}; do kill -0 "$t" 2>/dev/null || break; sleep 0.1; done
done
awk '/^test result: /{ for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i;
        if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$results"
