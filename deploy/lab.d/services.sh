# shellcheck shell=bash
# Stand-in node services for the nodemaint lab, shared by lab.d/ovs, lab.d/ays and
# `deploy/lab service`. Installed into $LAB_DIR/nodeI/bin/ by `deploy/lab up`.
#
# State lives in $SVC_ROOT (default $LAB_DIR/nodeI/services):
#   ovs/NAME            "running PID" or "stopped"
#   ays/NAME            same; ays/NAME.meta holds "DOMAIN INSTANCE PRIO PORTS"
#   GROUP/NAME.broken   present: starting NAME fails (deploy/lab service NODE break NAME)
# PIDs are fake (no processes are spawned), so nothing needs cleaning up.

SVC_OVS_DEFAULT="ovs-arakoon-ovsdb ovs-workers ovs-watcher-framework ovs-scheduled-tasks ovs-volumedriver_vpool1 ovs-webapp-api"
# DOMAIN NAME INSTANCE PRIO PORTS ("-" for no port)
SVC_AYS_DEFAULT="jumpscale:redis:system:1:9999 jumpscale:mongodb:main:2:27017 jumpscale:influxdb:main:3:8086 openvcloud:cloudbroker:main:10:- openvcloud:vncproxy:main:50:8091 openvcloud:nginx:main:60:80,443"

svc_write() { # file content (atomic)
  printf '%s\n' "$2" >"$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"
}
svc_newpid() { echo $((1000 + RANDOM % 30000)); }

svc_init() { # create state for both groups, all running
  local n e dom name inst prio ports
  mkdir -p "$SVC_ROOT/ovs" "$SVC_ROOT/ays"
  for n in ${LAB_OVS_SERVICES:-$SVC_OVS_DEFAULT}; do
    [[ -e $SVC_ROOT/ovs/$n ]] || svc_write "$SVC_ROOT/ovs/$n" "running $(svc_newpid)"
  done
  for e in ${LAB_AYS_SERVICES:-$SVC_AYS_DEFAULT}; do
    IFS=: read -r dom name inst prio ports <<<"$e"
    [[ -e $SVC_ROOT/ays/$name ]] || {
      svc_write "$SVC_ROOT/ays/$name.meta" "$dom $inst $prio $ports"
      svc_write "$SVC_ROOT/ays/$name" "running $(svc_newpid)"
    }
  done
}

svc_names() { # group -> names (sorted; ays by prio)
  local g=$1 f
  if [[ $g == ays ]]; then
    for f in "$SVC_ROOT/ays"/*.meta; do
      [[ -e $f ]] || continue
      read -r _ _ prio _ <"$f"
      printf '%s %s\n' "$prio" "$(basename "$f" .meta)"
    done | sort -n -k1,1 -k2,2 | awk '{print $2}'
  else
    for f in "$SVC_ROOT/$g"/*; do
      [[ -e $f && $f != *.broken && $f != *.meta && $f != *.tmp.* ]] || continue
      basename "$f"
    done | sort
  fi
}
svc_state() { # group name -> "running PID" | "stopped"
  cat "$SVC_ROOT/$1/$2" 2>/dev/null || echo stopped
}
svc_is_running() { [[ $(svc_state "$1" "$2") == running* ]]; }
svc_start() { # group name; fails if broken
  local g=$1 n=$2
  if [[ -e $SVC_ROOT/$g/$n.broken ]]; then
    return 1
  fi
  svc_is_running "$g" "$n" || svc_write "$SVC_ROOT/$g/$n" "running $(svc_newpid)"
}
svc_stop() { svc_write "$SVC_ROOT/$1/$2" stopped; }

svc_group_of() { # name -> group (ovs|ays) or fail
  local g
  for g in ovs ays; do
    [[ -e $SVC_ROOT/$g/$1 ]] && { echo "$g"; return 0; }
  done
  return 1
}

svc_after_reboot() { # mode: running | stopped | asis — what a boot does to the services
  local mode=$1 g n
  for g in ovs ays; do
    for n in $(svc_names "$g"); do
      case $mode in
        running) if [[ -e $SVC_ROOT/$g/$n.broken ]]; then svc_stop "$g" "$n"; else svc_write "$SVC_ROOT/$g/$n" "running $(svc_newpid)"; fi ;;
        stopped) svc_stop "$g" "$n" ;;
        asis) if svc_is_running "$g" "$n"; then svc_write "$SVC_ROOT/$g/$n" "running $(svc_newpid)"; fi ;;
      esac
    done
  done
}

svc_list_all() {
  local g n st
  for g in ovs ays; do
    for n in $(svc_names "$g"); do
      st=$(svc_state "$g" "$n")
      [[ -e $SVC_ROOT/$g/$n.broken ]] && st="$st (broken: start fails)"
      printf '%-4s %-26s %s\n' "$g" "$n" "$st"
    done
  done
}

svc_admin() { # action name  (deploy/lab service NODE ACTION NAME)
  local action=$1 n=$2 g
  g=$(svc_group_of "$n") || { echo "no stand-in service '$n' (see: deploy/lab service NODE list)" >&2; return 1; }
  case $action in
    stop) svc_stop "$g" "$n"; echo "$n stopped" ;;
    break) svc_stop "$g" "$n"; : >"$SVC_ROOT/$g/$n.broken"; echo "$n stopped and broken (starting it fails until 'start' or 'fix')" ;;
    fix) rm -f "$SVC_ROOT/$g/$n.broken"; echo "$n fixed (still $(svc_state "$g" "$n"))" ;;
    start) rm -f "$SVC_ROOT/$g/$n.broken"; svc_start "$g" "$n"; echo "$n $(svc_state "$g" "$n")" ;;
  esac
}
