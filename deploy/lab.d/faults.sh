# shellcheck shell=bash
# deploy/lab.d/faults.sh — sourced by deploy/lab: the NATS cluster, extra (standby)
# coordinators and the fault commands (nats/agent/net/coordinator kill and start).
# Uses deploy/lab's helpers (pidfile_alive, stop_pids, spawn_in_node, ...).

# ---------------------------------------------------------------- NATS members
# Member 1 is the lab's historical server (nats.pid, nats.log, store nats/ in single mode);
# members 2.. listen on NATS_PORT+100*(i-1); cluster routes on NATS_PORT+1000+100*(i-1).
nats_port() { echo $((NATS_PORT + 100 * ($1 - 1))); }
nats_route_port() { echo $((NATS_PORT + 1000 + 100 * ($1 - 1))); }
nats_pidfile() { if (($1 == 1)); then echo "$LAB_DIR/nats.pid"; else echo "$LAB_DIR/nats$1.pid"; fi; }
nats_logfile() { if (($1 == 1)); then echo "$LAB_DIR/nats.log"; else echo "$LAB_DIR/nats$1.log"; fi; }
nats_urls() { # comma-separated client URLs of every member
  local i urls=""
  for ((i = 1; i <= ${NATS_CLUSTER:-1}; i++)); do
    urls+="${urls:+,}nats://$HOST_ADDR:$(nats_port "$i")"
  done
  echo "$urls"
}
nats_replicas() { if ((${NATS_CLUSTER:-1} >= 3)); then echo 3; else echo 1; fi; }

write_nats_cluster_config() { # i -> $LAB_DIR/nats/nI.conf (same shape as deploy/nats/cluster/)
  local i=$1 j routes="" route_tls="" client_sec=""
  if ((${SECURE:-0})); then
    # As the shipped configs: clients need nkeys and TLS; routes mutual TLS and the route
    # secret, the routes themselves listed (with that login) in gen-routes' cluster-routes.conf.
    # (nats-server resolves includes relative to the including file only.)
    route_tls='  include "../secure/tls/cluster-tls.conf"'$'\n''  include "../secure/tls/cluster-routes.conf"'
    client_sec='include "../secure/auth/auth.conf"'$'\n''include "../secure/tls/tls.conf"'
  else
    routes="  routes: ["$'\n'
    for ((j = 1; j <= NATS_CLUSTER; j++)); do
      ((j == i)) || routes+="    nats-route://$HOST_ADDR:$(nats_route_port "$j")"$'\n'
    done
    routes+="  ]"
  fi
  mkdir -p "$LAB_DIR/nats/s$i"
  cat >"$LAB_DIR/nats/n$i.conf" <<EOF
# nodemaint lab: JetStream cluster member $i of $NATS_CLUSTER
server_name: n$i
listen: $HOST_ADDR:$(nats_port "$i")
jetstream {
  store_dir: "$LAB_DIR/nats/s$i"
}
cluster {
  name: ${PREFIX}
  listen: $HOST_ADDR:$(nats_route_port "$i")
$route_tls
$routes
}
$client_sec
EOF
}

start_nats_member() { # i (store and config kept across restarts)
  local i=$1 nats
  nats=$(nats_bin)
  mkdir -p "$LAB_DIR/nats"
  if ((${SECURE:-0})) && ((${NATS_CLUSTER:-1} <= 1)); then
    setsid "$nats" -c "$SECURE_DIR/nats.conf" \
      -P "$(nats_pidfile 1)" -l "$(nats_logfile 1)" </dev/null >/dev/null 2>&1 9<&- &
  elif ((${NATS_CLUSTER:-1} <= 1)); then
    setsid "$nats" -js -a "$HOST_ADDR" -p "$NATS_PORT" -sd "$LAB_DIR/nats" \
      -P "$(nats_pidfile 1)" -l "$(nats_logfile 1)" </dev/null >/dev/null 2>&1 9<&- &
  else
    [[ -f $LAB_DIR/nats/n$i.conf ]] || write_nats_cluster_config "$i"
    setsid "$nats" -c "$LAB_DIR/nats/n$i.conf" -P "$(nats_pidfile "$i")" -l "$(nats_logfile "$i")" \
      </dev/null >/dev/null 2>&1 9<&- &
  fi
  disown || true
}

start_nats_all() {
  local i
  for ((i = 1; i <= ${NATS_CLUSTER:-1}; i++)); do start_nats_member "$i"; done
}

wait_nats_member() { # i timeout_s
  local i=$1
  wait_tcp "$HOST_ADDR" "$(nats_port "$i")" "$2" && wait_pidfile "$(nats_pidfile "$i")" 30 &&
    pidfile_alive "$(nats_pidfile "$i")" nats-server >/dev/null
}

wait_nats_all() {
  local i
  for ((i = 1; i <= ${NATS_CLUSTER:-1}; i++)); do
    wait_nats_member "$i" 60 ||
      die "nats-server $i did not start on $HOST_ADDR:$(nats_port "$i") (port taken? see $(nats_logfile "$i"))"
  done
  if ((${NATS_CLUSTER:-1} > 1)); then
    # JetStream needs a meta leader before streams can be created.
    local deadline=$((SECONDS + 90))
    until grep -qs "JetStream cluster new metadata leader\|Self is new JetStream cluster metadata leader" \
      "$LAB_DIR"/nats*.log; do
      ((SECONDS < deadline)) || die "the NATS cluster elected no JetStream leader (see $LAB_DIR/nats*.log)"
      sleep 0.2
    done
  fi
}

stop_nats_all() {
  local i f
  for f in "$LAB_DIR"/nats.pid "$LAB_DIR"/nats[0-9]*.pid; do
    [[ -f $f ]] && stop_pidfile TERM 5 "$f" nats-server
  done
  return 0
}

cmd_nats() { # kill|start|restart [I]
  load_env
  local action=${1:-} i=${2:-1} p
  [[ $i =~ ^[0-9]+$ ]] && ((i >= 1 && i <= ${NATS_CLUSTER:-1})) ||
    die "nats: no server $i (the lab runs ${NATS_CLUSTER:-1})"
  case $action in
    kill | restart)
      p=$(pidfile_alive "$(nats_pidfile "$i")" nats-server) || die "nats-server $i is not running"
      kill -KILL "$p"
      wait_dead 30 "$p" || die "nats-server $i ($p) did not die"
      echo "nats-server $i ($p) killed"
      [[ $action == kill ]] && return 0
      ;&
    start)
      pidfile_alive "$(nats_pidfile "$i")" nats-server >/dev/null && die "nats-server $i is already running"
      rm -f "$(nats_pidfile "$i")"
      start_nats_member "$i"
      wait_nats_member "$i" 60 || die "nats-server $i did not start (see $(nats_logfile "$i"))"
      echo "nats-server $i started (pid $(read_pid "$(nats_pidfile "$i")"))"
      ;;
    *) die "usage: lab nats kill|start|restart [I]" ;;
  esac
}

# ---------------------------------------------------------------- coordinators
# Coordinator 1 is coordinator.pid/.log; more (standbys behind the leader lease) are
# coordinatorI.pid/.log. LAB_COORDINATORS=N at `up` starts N.
coord_pidfile() { if (($1 == 1)); then echo "$LAB_DIR/coordinator.pid"; else echo "$LAB_DIR/coordinator$1.pid"; fi; }
coord_logfile() { if (($1 == 1)); then echo "$LAB_DIR/coordinator.log"; else echo "$LAB_DIR/coordinator$1.log"; fi; }
coord_count() { echo "${COORDINATORS:-1}"; }

start_coordinator_n() { # i
  local i=$1
  # shellcheck disable=SC2016 # expanded by the inner bash
  # shellcheck disable=SC2046 # security_env: words on purpose
  setsid env -u NATS_CREDS -u NODEMAINT_CREDS -u NATS_NKEY -u NATS_CA NATS_URL="$NATS_URL" $(security_env coordinator) \
    bash -c 'echo $$ >"$1"; shift; exec "$@"' coordinator \
    "$(coord_pidfile "$i")" "$BIN_DIR/coordinator" serve --nats-url "$NATS_URL" \
    --config "$LAB_DIR/coordinator.toml" $(insecure_flag) \
    </dev/null >>"$(coord_logfile "$i")" 2>&1 9<&- &
  disown || true
}

coordinator_pids() { # every alive coordinator's pid
  local f p
  for f in "$LAB_DIR"/coordinator.pid "$LAB_DIR"/coordinator[0-9]*.pid; do
    [[ -f $f ]] || continue
    p=$(pidfile_alive "$f" coordinator) && echo "$p"
  done
  return 0
}

leader_index() { # the alive coordinator that holds the lease (its log says so last)
  local i n
  n=$(coord_count)
  for ((i = 1; i <= n; i++)); do
    pidfile_alive "$(coord_pidfile "$i")" coordinator >/dev/null || continue
    if grep -qs "holding the leader lease" "$(coord_logfile "$i")"; then
      echo "$i"
      return 0
    fi
  done
  return 1
}

# coordinator kill [--leader|--standby|I] | start [I|--all] | leader
cmd_coordinator() {
  load_env
  local action=${1:-} which=${2:-} i p n
  n=$(coord_count)
  case $action in
    kill)
      case $which in
        "" | --leader)
          if ((n == 1)); then i=1; else
            # a standby takes the lease over only when it expires (lease_ttl_s, 15 s in a cluster)
            local deadline=$((SECONDS + 90))
            until i=$(leader_index); do
              ((SECONDS < deadline)) || die "no coordinator holds the leader lease"
              sleep 0.1
            done
          fi
          ;;
        --standby)
          i=""
          local j l
          l=$(leader_index) || die "no coordinator holds the leader lease"
          for ((j = 1; j <= n; j++)); do
            ((j != l)) && pidfile_alive "$(coord_pidfile "$j")" coordinator >/dev/null && i=$j && break
          done
          [[ -n $i ]] || die "no standby coordinator is running"
          ;;
        *) i=$which ;;
      esac
      [[ $i =~ ^[0-9]+$ ]] && ((i >= 1 && i <= n)) || die "no coordinator $i (the lab has $n)"
      p=$(pidfile_alive "$(coord_pidfile "$i")" coordinator) || die "coordinator $i is not running"
      kill -KILL "$p"
      wait_dead 30 "$p" || die "coordinator $i ($p) did not die"
      echo "coordinator $i ($p) killed"
      ;;
    start)
      local started=0
      for ((i = 1; i <= n; i++)); do
        [[ -n $which && $which != --all && $which != "$i" ]] && continue
        pidfile_alive "$(coord_pidfile "$i")" coordinator >/dev/null && continue
        rm -f "$(coord_pidfile "$i")"
        start_coordinator_n "$i"
        wait_pidfile "$(coord_pidfile "$i")" 60 || die "coordinator $i did not start"
        echo "coordinator $i started (pid $(read_pid "$(coord_pidfile "$i")"))"
        started=1
      done
      ((started)) || die "coordinator${which:+ $which} is already running"
      ;;
    leader)
      i=$(leader_index) || die "no coordinator holds the leader lease"
      echo "$i"
      ;;
    *) die "usage: lab coordinator kill [--leader|--standby|I] | start [I|--all] | leader" ;;
  esac
}

# ---------------------------------------------------------------- agents, network
cmd_agent() { # kill|start NODE
  load_env
  [[ $# -eq 2 ]] || die "usage: lab agent kill|start NODE"
  local i d p
  i=$(node_index "$2")
  d=$(node_dir "$i")
  case $1 in
    kill)
      p=$(pidfile_alive "$d/agent.pid" node-agent) || die "node$i: agent is not running"
      kill -KILL "$p"
      wait_dead 30 "$p" || die "node$i: agent $p did not die"
      echo "node$i: agent $p killed"
      ;;
    start)
      pidfile_alive "$d/agent.pid" node-agent >/dev/null && die "node$i: agent is already running"
      rm -f "$d/agent.pid"
      start_agent "$i"
      wait_pidfile "$d/agent.pid" 60 || die "node$i: agent did not start (see $d/agent.log)"
      echo "node$i: agent started (pid $(read_pid "$d/agent.pid"))"
      ;;
    *) die "usage: lab agent kill|start NODE" ;;
  esac
}

cmd_net() { # cut|restore NODE : the node's link to the bridge down/up (host side of its veth)
  load_env
  [[ $# -eq 2 ]] || die "usage: lab net cut|restore NODE"
  local i
  i=$(node_index "$2")
  case $1 in
    cut) ip link set "$(node_veth "$i")" down && echo "node$i cut off the network" ;;
    restore) ip link set "$(node_veth "$i")" up && echo "node$i back on the network" ;;
    *) die "usage: lab net cut|restore NODE" ;;
  esac
}
