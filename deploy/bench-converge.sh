#!/usr/bin/env bash
# deploy/bench-converge.sh — migrations that converge (issue 17 §1), on real QEMU/KVM in the lab.
#
# A 2-node lab with 64 MiB guests on one node: an idle one, one writing 40 MiB/s over an 8 MiB
# working set (a hot set: every pass re-copies it, and at 16 MiB/s a switch-over needs ~500 ms,
# more than QEMU's default 300 ms), and one writing 40 MiB/s over all its RAM (faster than the
# link). Each is moved with the bandwidth capped at 16 MiB/s, without escalation
# (--max-downtime 300ms --no-auto-converge) and with the default policy (downtime steps 300 ms ..
# 2 s, auto-converge), and the whole-RAM writer with --post-copy too. For each move: the result,
# its total time, libvirt's measured downtime (against QEMU's default 300 ms) and the escalations.
#
# Needs root, the lab's tools (deploy/setup.sh --for test) and debug binaries
# (cargo build --workspace --bins). Takes ~3 min. Prints a Markdown table.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${NODEMAINT_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/debug}
export NODEMAINT_BIN_DIR=$BIN LAB_DIR=/run/nodemaint-bench-converge LAB_PREFIX=nmbc LAB_SUBNET=10.78.9 \
  LAB_NATS_PORT=4499
CAP=${CAP:-16}
TIMEOUT=${TIMEOUT:-40s}
lab() { flock /tmp/nodemaint-lab.lock "$REPO/deploy/lab" "$@"; }
trap 'lab down >/dev/null 2>&1 || true' EXIT
lab down >/dev/null 2>&1 || true
lab up --nodes 2 --vms-per-node 3 --cloudspaces 1 \
  --dirty-vm node1-vm2=40:8 --dirty-vm node1-vm3=40 >/dev/null 2>&1
export NATS_URL=nats://$LAB_SUBNET.1:$LAB_NATS_PORT NODEMAINT_USER=operator

echo "| guest (64 MiB, link capped at $CAP MiB/s) | policy | result | total | downtime | escalations |"
echo "| --- | --- | --- | --- | --- | --- |"
# move VM GUEST-LABEL POLICY-LABEL ARGS...: one row, VM to the node it is not on
move() {
  local vm=$1 guest=$2 policy=$3 out t0 t1 ok result downtime esc to=node2
  shift 3
  [[ $("$BIN/coordinator" vm list --node node2 --output json) == *"\"$vm\""* ]] && to=node1
  t0=$(date +%s.%N)
  out=$("$BIN/coordinator" vm move "$vm" --to "$to" --max-speed "$CAP" --timeout "$TIMEOUT" \
    --output json "$@" 2>/dev/null) && ok=1 || ok=0
  t1=$(date +%s.%N)
  result=$(python3 -c '
import json, re, sys
ok, lines = sys.argv[1] == "1", [json.loads(l) for l in sys.stdin if l.startswith("{")]
res = [l["body"] for l in lines if l.get("kind") == "result"]
msg = res[-1]["message"] if res else ""
m = re.search(r"downtime (\d+) ms", msg)
esc = [l["body"]["message"] for l in lines if l.get("kind") == "progress" and l["body"].get("step") == "escalating"]
steps = []
for e in esc:
    raised, throttle = re.search(r"raised to (?:the )?(\d+) ms", e), re.search(r"throttles .* to (\d+) %", e)
    if "switching to post-copy" in e: steps.append("post-copy")
    elif raised: steps.append(raised.group(1) + " ms")
    elif throttle: steps.append("vCPUs throttled to " + throttle.group(1) + " %")
    else: steps.append("ceiling, nothing more permitted")
steps = [s for i, s in enumerate(steps) if i == 0 or s != steps[i - 1]]
print("converged" if ok else "did not converge (aborted)", "|", (m.group(1) + " ms") if m else "–", "|", ", ".join(steps) or "none")
' "$ok" <<<"$out")
  IFS='|' read -r res downtime esc <<<"$result"
  printf '| %s | %s | %s | %.1f s | %s | %s |\n' "$guest" "$policy" "${res% }" "$(echo "$t1 - $t0" | bc)" \
    "${downtime# }" "${esc# }"
}
none=(--max-downtime 300ms --no-auto-converge)
move node1-vm1 "idle" "none" "${none[@]}"
move node1-vm1 "idle" "default"
move node1-vm2 "40 MiB/s over 8 MiB" "none" "${none[@]}"
move node1-vm2 "40 MiB/s over 8 MiB" "default"
move node1-vm3 "40 MiB/s over all RAM" "none" "${none[@]}"
move node1-vm3 "40 MiB/s over all RAM" "default (no post-copy)"
move node1-vm3 "40 MiB/s over all RAM" "default + --post-copy" --post-copy
