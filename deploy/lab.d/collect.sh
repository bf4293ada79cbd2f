# shellcheck shell=bash
# deploy/lab.d/collect.sh — sourced by deploy/lab: `collect DIR [--tails]`, the evidence of a lab
# (a failed `up`, a failed suite) copied out of $LAB_DIR before `down` deletes it.
# Uses deploy/lab's helpers (load_env, node_dir, pidfile_alive, nats_pidfile, coord_pidfile, ...).
#
# DIR gets, with $LAB_DIR's layout: lab.env, state, configs, every log (nats*, coordinator*,
# nodeI/{agent.log,libvirtd.out,holder.log,reboot.log}, nodeI/root/log-libvirt/ with libvirtd.log,
# virtlogd.log and the domains' qemu/*.log), the domains' XML; and
#   status.txt, status.json   `lab status` at collection time
#   processes.txt             every lab process: label, pid, alive|DIED|not started, its logs
#   died.txt                  for each process that died: the last lines of its logs
#   ps.txt                    the machine's processes
# Secrets (secure/auth, the TLS keys) are not copied.
# stdout: where it went and died.txt; with --tails also the last lines of every log.

COLLECT_LINES=${LAB_COLLECT_LINES:-20}

lab_processes() { # lines: LABEL<TAB>PIDFILE<TAB>NAMES (space-separated)<TAB>LOGS (space-separated)
  local m i d
  for ((m = 1; m <= ${NATS_CLUSTER:-1}; m++)); do
    printf 'nats%s\t%s\tnats-server\t%s\n' "$m" "$(nats_pidfile "$m")" "$(nats_logfile "$m")"
  done
  for ((m = 1; m <= ${COORDINATORS:-1}; m++)); do
    printf 'coordinator%s\t%s\tcoordinator\t%s\n' "$m" "$(coord_pidfile "$m")" "$(coord_logfile "$m")"
  done
  for ((i = 1; i <= NODES; i++)); do
    d=$(node_dir "$i")
    printf 'node%s holder\t%s\tsleep unshare\t%s\n' "$i" "$d/holder.pid" "$d/holder.log"
    printf 'node%s virtlogd\t%s\tvirtlogd\t%s\n' "$i" "$d/virtlogd.pid" "$d/root/log-libvirt/virtlogd.log"
    printf 'node%s libvirtd\t%s\tlibvirtd\t%s %s\n' "$i" "$d/libvirtd.pid" \
      "$d/root/log-libvirt/libvirtd.log" "$d/libvirtd.out"
    printf 'node%s agent\t%s\tnode-agent\t%s\n' "$i" "$d/agent.pid" "$d/agent.log"
  done
}

collect_copy() { # dest rel... : copy $LAB_DIR/REL (file or dir) to DEST/REL when it exists
  local dest=$1 rel
  shift
  for rel in "$@"; do
    [[ -e $LAB_DIR/$rel ]] || continue
    mkdir -p "$dest/$(dirname "$rel")"
    cp -a "$LAB_DIR/$rel" "$dest/$rel" 2>/dev/null || true
  done
}

# `tail` of a log, indented; ANSI colours (the daemons' tracing output) removed.
collect_tail() { # file
  tail -n "$COLLECT_LINES" "$1" 2>/dev/null | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/    /'
}

cmd_collect() {
  [[ $# -ge 1 && $1 != -* ]] || die "usage: lab collect DIR [--tails]"
  local dest=$1 tails=0
  shift
  while (($#)); do
    case $1 in
      --tails) tails=1; shift ;;
      *) die "collect: unknown argument '$1'" ;;
    esac
  done
  load_env
  [[ -d $LAB_DIR ]] || die "no lab directory $LAB_DIR: nothing to collect"
  mkdir -p "$dest" || die "cannot create $dest"
  dest=$(cd "$dest" && pwd)

  local -a rels=(lab.env state bridge iptables.rules coordinator.toml guest-template.xml secure/nats.conf)
  local f i d rel
  for f in "$LAB_DIR"/*.log "$LAB_DIR"/nats/*.conf; do
    [[ -e $f ]] && rels+=("${f#"$LAB_DIR"/}")
  done
  for d in "$LAB_DIR"/node*; do
    [[ -d $d ]] || continue
    rel=${d#"$LAB_DIR"/}
    for f in agent.toml agent.log libvirtd.out holder.log reboot.log boot_id boot_time host_uuid \
      domains services root/log-libvirt root/etc-libvirt/libvirtd.conf root/etc-libvirt/qemu.conf \
      root/etc-libvirt/virtlogd.conf; do
      rels+=("$rel/$f")
    done
  done
  collect_copy "$dest" "${rels[@]}"

  # `status` runs in a subshell: a failure there (libvirtd gone) must not end the collection.
  (cmd_status) >"$dest/status.txt" 2>&1 || true
  (cmd_status --json) >"$dest/status.json" 2>&1 || true
  ps -eo pid,ppid,stat,etimes,args >"$dest/ps.txt" 2>&1 || true

  local label pidfile names logs pid st log died=0
  local -a comms
  : >"$dest/died.txt"
  : >"$dest/processes.txt"
  while IFS=$'\t' read -r label pidfile names logs; do
    pid=$(read_pid "$pidfile")
    read -ra comms <<<"$names"
    if [[ ! -e $pidfile ]]; then
      st="not started (no pid file)"
    elif [[ -n $pid ]] && pid_alive "$pid" && pid_comm_is "$pid" "${comms[@]}"; then
      st=alive
    else
      st=DIED
    fi
    printf '%-22s pid %-8s %-26s %s\n' "$label" "${pid:--}" "$st" "${logs//$LAB_DIR\//}" >>"$dest/processes.txt"
    [[ $st == DIED ]] || continue
    died=1
    {
      echo "DIED: $label (pid ${pid:-?}, pid file ${pidfile#"$LAB_DIR"/})"
      for log in $logs; do
        if [[ -s $log ]]; then
          echo "  last $COLLECT_LINES lines of ${log#"$LAB_DIR"/}:"
          collect_tail "$log"
        else
          echo "  ${log#"$LAB_DIR"/}: empty or missing"
        fi
      done
    } >>"$dest/died.txt"
  done < <(lab_processes)

  echo "lab evidence of $LAB_DIR (state $(cat "$LAB_DIR/state" 2>/dev/null || echo unknown)) copied to $dest"
  if ((died)); then
    cat "$dest/died.txt"
  else
    echo "(no lab process died: see $dest/processes.txt)"
  fi
  if ((tails)); then
    while IFS= read -r -d '' f; do
      [[ -s $f ]] || continue
      echo "--- last $COLLECT_LINES lines of ${f#"$dest"/}"
      collect_tail "$f"
    done < <(find "$dest" -name '*.log' -type f -print0 -o -name libvirtd.out -type f -print0 | sort -z)
  fi
}
