#!/usr/bin/env bash
# The main job, end to end on a local lab (run as root; ~30 s once built, plus the first
# setup and build: it prints each phase with the time elapsed, and cargo its progress):
# a 3-node KVM lab with tenants' VMs and one virtual firewall (VFW) per
# cloudspace, then the seed's maintenance procedure with nodemaint:
#   list nodes and VFWs → move a VM and a VFW live → put node2 in
#   maintenance with "move all" (node empty, every VFW still running) →
#   enable → "stop all" with the VFW acknowledgement → enable restarts
#   exactly those VMs → the event stream.
# The bus is secured (`lab up --secure`): TLS with a lab CA, and every agent,
# the coordinator and each operator on its own nkey with subject permissions;
# the demo acts as `operator` (Level2) and shows a `viewer` being refused.
# Installs what it needs (deploy/setup.sh --for demo: no browser, no load generator), builds,
# and tears the lab down at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

t0=$(date +%s)
progress() { printf '[%4d s] %s\n' $(( $(date +%s) - t0 )) "$*"; }
progress "setup: what the demo needs (deploy/setup.sh --for demo; silent if all is there)"
deploy/setup.sh --for demo
export PATH="$HOME/.cargo/bin:$PATH"
progress "build: cargo build --workspace --bins (debug; minutes the first time, seconds after)"
cargo build --workspace --bins
progress "lab: 3 KVM nodes with tenants' VMs and a VFW per cloudspace, secured bus"

export LAB_DIR=${LAB_DIR:-/run/nodemaint-demo} LAB_PREFIX=${LAB_PREFIX:-nmdemo}
export LAB_SUBNET=${LAB_SUBNET:-10.76.0} LAB_NATS_PORT=${LAB_NATS_PORT:-4522}
trap 'deploy/lab down >/dev/null 2>&1 || true' EXIT
deploy/lab up --nodes 3 --vms-per-node 2 --cloudspaces 3 --secure

CREDS=$LAB_DIR/secure/auth/creds
export NATS_URL="nats://$LAB_SUBNET.1:$LAB_NATS_PORT" NATS_CA=$LAB_DIR/secure/tls/ca.pem
export NODEMAINT_CREDS=$CREDS/operator.creds
nm() { echo; echo "\$ coordinator $*"; "$REPO/target/debug/coordinator" "$@"; }
say() { echo; echo "=== $*"; }

for _ in $(seq 1 50); do  # until the agents have reported their domains
  n=$("$REPO/target/debug/coordinator" node list -o json 2>/dev/null |
    python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin) if n["vms_total"]))' 2>/dev/null || echo 0)
  [[ $n == 3 ]] && break
  sleep 0.2
done

say "The fleet: stacks, their VMs, and where every cloudspace's firewall runs"
nm node list
nm vfw list
nm node show node2

say "Manual moves: a tenant VM, then a VFW (live, with progress)"
nm vm move node1-vm1 --to node3 --max-speed 16
vfw_node=$("$REPO/target/debug/coordinator" vfw list -o json | python3 -c 'import json,sys; print([v["node"] for v in json.load(sys.stdin) if v["cloudspace"]=="cs1"][0])')
dest=node1; [[ $vfw_node == node1 ]] && dest=node3
nm vfw move cs1 --to "$dest"

say "Put node2 in maintenance, moving all its VMs away (VFWs first)"
echo "(pre-flight first: the plan and every check; nothing changes)"
nm maintenance start node2 --mode move --dry-run
nm maintenance start node2 --mode move --deadline 5m
nm node show node2
nm vfw list
echo; echo "libvirt on node2 itself (empty):"; deploy/lab virsh node2 list --all

say "A new VM is never scheduled on a node in maintenance"
nm vm create --name demo-new --memory 64 --cloudspace cs2
nm vm list --cloudspace cs2

say "Enable node2 again"
nm node enable node2

say "Stop mode: refused until the VFW downtime is acknowledged"
target=$("$REPO/target/debug/coordinator" vfw list -o json | python3 -c 'import json,sys; print([v["node"] for v in json.load(sys.stdin)][0])')
nm maintenance start "$target" --mode stop || echo "(refused, as it should be)"
nm maintenance start "$target" --mode stop --ack-vfw-downtime
nm vm list --node "$target"

say "After the reboot: check the node's services, then enable; the stopped VMs restart"
nm node check "$target"
nm node enable "$target"
nm vm list --node "$target"

say "Security: a read-only operator (viewer, Level1) may look but not change"
NODEMAINT_CREDS=$CREDS/viewer.creds nm node list
NODEMAINT_CREDS=$CREDS/viewer.creds nm node enable node2 2>&1 || echo "(refused by the NATS server, as it should be)"
echo; echo "No credentials, no entry:"
(unset NODEMAINT_CREDS; nm node list 2>&1) || true

say "Who did what: jobs and the event stream"
nm job list
nm events --since 10m --kind job | tail -15
say "Done in $(( $(date +%s) - t0 )) s; tearing the lab down"
