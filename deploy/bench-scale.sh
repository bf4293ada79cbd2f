#!/usr/bin/env bash
# deploy/bench-scale.sh N... — the steady-state cost of N agents (issue 17 §5), release builds.
#
# For each N: a fresh nats-server (JetStream, monitoring port), `coordinator serve` and one
# `sim-fleet` of N agents (20 VMs each, heartbeat 2 s, the agents' default); once every agent
# is registered and reachable, it samples for WINDOW_S seconds (default 30):
#   NATS traffic     messages/s and bytes/s into the server (nats-server /varz in_msgs, in_bytes)
#   KV writes/s      sum of last_seq over every JetStream stream (/jsz?streams=true): each KV
#                    put and each stream publish is one sequence
#   coordinator      CPU (% of one core, from /proc utime+stime) and RSS at the end
#   nats-server      CPU and RSS
#   sim-fleet        CPU (all N agents in one process, for scale)
# and prints one JSON line per N. Needs: nats-server on PATH, python3, and release binaries:
#   cargo build --release -p nodemaint-coordinator --bin coordinator -p nodemaint-agent --bin sim-fleet
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${NODEMAINT_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}
WINDOW_S=${WINDOW_S:-30}
die() { echo "bench-scale: error: $*" >&2; exit 1; }
(($#)) || die "usage: bench-scale.sh N... (agent counts, e.g. 1000 5000 10000)"
for b in coordinator sim-fleet; do [[ -x $BIN/$b ]] || die "$BIN/$b not built (see the header)"; done
command -v nats-server >/dev/null || die "nats-server not on PATH"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
varz() { python3 -c 'import json,sys,urllib.request as u; v=json.load(u.urlopen(sys.argv[1]+"/varz")); print(v["in_msgs"], v["in_bytes"])' "$1"; }
seqs() { python3 -c '
import json,sys,urllib.request as u
j=json.load(u.urlopen(sys.argv[1]+"/jsz?streams=true"))
print(sum(s["state"]["last_seq"] for a in j.get("account_details",[]) for s in a.get("stream_detail",[])))' "$1"; }

pids=()
cleanup() { ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

for n in "$@"; do
  dir=$(mktemp -d)
  port=$(free_port) mport=$(free_port)
  url=nats://127.0.0.1:$port mon=http://127.0.0.1:$mport
  nats-server -js -a 127.0.0.1 -p "$port" -m "$mport" -sd "$dir/js" >"$dir/nats.log" 2>&1 &
  npid=$!
  pids=("$npid")
  printf 'nats_url = "%s"\n[users.alice]\ngroups = ["Level2"]\n' "$url" >"$dir/coordinator.toml"
  until curl -sf "$mon/varz" >/dev/null; do sleep 0.2; done
  "$BIN/coordinator" serve --config "$dir/coordinator.toml" --insecure >"$dir/coordinator.log" 2>&1 &
  cpid=$!
  pids+=("$cpid")
  until NATS_URL=$url NODEMAINT_USER=alice "$BIN/coordinator" node list >/dev/null 2>&1; do sleep 0.5; done
  t0=$SECONDS
  "$BIN/sim-fleet" --nats-url "$url" --nodes "$n" --vms-per-node 20 --cloudspaces "$((n / 5 + 1))" \
    --state-dir "$dir/sim" >"$dir/sim.log" 2>&1 &
  spid=$!
  pids+=("$spid")
  until [[ $(NATS_URL=$url NODEMAINT_USER=alice "$BIN/coordinator" node list --output json 2>/dev/null |
    python3 -c 'import json,sys; print(sum(1 for x in json.load(sys.stdin) if x.get("reachable")))' 2>/dev/null) == "$n" ]]; do
    kill -0 "$spid" 2>/dev/null || die "sim-fleet died (see $dir/sim.log)"
    ((SECONDS - t0 < 900)) || die "$n agents not registered within 900 s"
    sleep 2
  done
  reg_s=$((SECONDS - t0))
  read -r m0 b0 < <(varz "$mon"); q0=$(seqs "$mon"); c0=$(cpu_ticks "$cpid"); s0=$(cpu_ticks "$spid"); k0=$(cpu_ticks "$npid")
  start=$(date +%s.%N)
  sleep "$WINDOW_S" # the measurement window itself, not a wait for a condition
  read -r m1 b1 < <(varz "$mon"); q1=$(seqs "$mon"); c1=$(cpu_ticks "$cpid"); s1=$(cpu_ticks "$spid"); k1=$(cpu_ticks "$npid")
  el=$(python3 -c "import time; print(time.time() - $start)")
  hz=$(getconf CLK_TCK)
  python3 -c "
import json
el=$el; hz=$hz
print(json.dumps({'agents': $n, 'register_s': $reg_s, 'window_s': round(el, 1),
  'msgs_per_s': round(($m1-$m0)/el), 'bytes_per_s': round(($b1-$b0)/el),
  'stream_writes_per_s': round(($q1-$q0)/el, 1),
  'coordinator_cpu_pct': round(100*($c1-$c0)/hz/el, 1), 'coordinator_rss_mib': $(rss_mib "$cpid"),
  'nats_server_cpu_pct': round(100*($k1-$k0)/hz/el, 1), 'nats_server_rss_mib': $(rss_mib "$npid"),
  'sim_fleet_cpu_pct': round(100*($s1-$s0)/hz/el, 1), 'sim_fleet_rss_mib': $(rss_mib "$spid")}))"
  cleanup
  pids=()
  rm -rf "$dir"
done
