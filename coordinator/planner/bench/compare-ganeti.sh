#!/usr/bin/env bash
# Side-by-side comparison of the nodemaint planner with Ganeti's hail
# (IAllocator node-evacuate) and hroller on the same generated fleets.
# Prints markdown tables. Extra arguments go to planner-compare, e.g.
#   bench/compare-ganeti.sh --nodes 1000 --vms 20000 --drains 5
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/lib/ganeti/iallocators/hail ] || ! command -v hroller >/dev/null; then
  echo "installing ganeti-htools (hail, hroller)..." >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ganeti-htools >&2
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-planner}"
cargo build --release -q -p nodemaint-planner --bin planner-compare
"$CARGO_TARGET_DIR/release/planner-compare" "$@"
