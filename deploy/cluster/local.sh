#!/usr/bin/env bash
# A three-node RabbitMQ cluster on loopback, with Debian's rabbitmq-server, for development and the cluster tests.
#
#   deploy/cluster/local.sh up            start n1..n3@localhost (those not running) and cluster them
#   deploy/cluster/local.sh down          stop the three nodes and delete their data
#   deploy/cluster/local.sh status        which nodes run, and the cluster as n1 sees it
#   deploy/cluster/local.sh start N       start node N (1..3) again: it rejoins with its data
#   deploy/cluster/local.sh kill N        kill -9 node N (a crash, for failover tests)
#   deploy/cluster/local.sh urls          the AMQP URLs of the nodes, comma-separated (for ESI_AMQP_URL)
#
# Node i: name n<i>@localhost, AMQP 127.0.0.1:568<i>, distribution port 2568<i>, management 1568<i>, Prometheus
# 1579<i>; data, logs, PID file and config under $ESI_CLUSTER_DIR/n<i> (default /tmp/esi-cluster: the nodes run as
# the rabbitmq user, who cannot enter root's directories). The Erlang cookie is the machine's (the rabbitmq user's,
# which rabbitmq-server and rabbitmqctl switch to when run by root). The RabbitMQ already running on 5672
# (rabbit@<host>) is left alone: other node names, ports and directories. Partitions: pause_minority. Each node gets
# deploy/rabbitmq/advanced.config as every esi broker does (copied at each start; `up` applies it to running nodes).
set -euo pipefail

ADVANCED="$(cd "$(dirname "$0")/../rabbitmq" && pwd)/advanced.config"

BASE="${ESI_CLUSTER_DIR:-/tmp/esi-cluster}"
NODES=(1 2 3)
START_TIMEOUT="${ESI_CLUSTER_START_TIMEOUT:-90}"

node_name() { echo "n$1@localhost"; }
node_dir() { echo "$BASE/n$1"; }

# rabbitmqctl derives its own distribution settings from RABBITMQ_* variables: give it none of a node's
ctl() { env -u RABBITMQ_NODENAME -u RABBITMQ_NODE_PORT -u RABBITMQ_DIST_PORT -u RABBITMQ_CONFIG_FILE \
        -u RABBITMQ_MNESIA_BASE -u RABBITMQ_LOG_BASE -u RABBITMQ_PID_FILE -u RABBITMQ_ENABLED_PLUGINS_FILE \
        rabbitmqctl "$@"; }

quiet() {  # the CLI prints the node's log lines while joining: show them only when the command fails
  local out
  if ! out="$("$@" 2>&1)"; then echo "$out" >&2; return 1; fi
}

running() { ctl -q -n "$(node_name "$1")" ping >/dev/null 2>&1; }

write_config() {
  local i=$1 dir
  dir="$(node_dir "$i")"
  mkdir -p "$dir/mnesia" "$dir/log"
  echo "[rabbitmq_management,rabbitmq_prometheus]." >"$dir/enabled_plugins"
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:568$i
management.tcp.ip = 127.0.0.1
management.tcp.port = 1568$i
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = 1579$i
cluster_partition_handling = pause_minority
disk_free_limit.absolute = 50MB
log.console = false
log.file.level = info
EOF
  own "$BASE"
}

own() {  # the nodes run as the rabbitmq user: they must read what root wrote
  if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq:rabbitmq "$1"
  fi
}

advanced_config() {  # the repository's advanced.config, where node $1 reads it
  local file
  file="$(node_dir "$1")/advanced.config"
  cp "$ADVANCED" "$file"
  own "$file"
}

apply_advanced_config() {  # what advanced.config sets, into the running node $1 (it read its file at boot)
  advanced_config "$1"
  quiet ctl -q -n "$(node_name "$1")" eval "{ok, [Config]} = file:consult(\"$(node_dir "$1")/advanced.config\"),
    [application:set_env(App, Key, Value) || {App, Settings} <- Config, {Key, Value} <- Settings], ok."
}

start_node() {
  local i=$1 dir
  dir="$(node_dir "$i")"
  if running "$i"; then apply_advanced_config "$i"; return 0; fi
  [ -f "$dir/rabbitmq.conf" ] || write_config "$i"
  advanced_config "$i"
  echo "cluster: starting $(node_name "$i") on 127.0.0.1:568$i"
  RABBITMQ_NODENAME="$(node_name "$i")" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="568$i" \
  RABBITMQ_DIST_PORT="2568$i" RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
  RABBITMQ_PID_FILE="$dir/rabbit.pid" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
  RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    rabbitmq-server -detached
}

await_node() {
  local i=$1
  # `-detached` returns before the node is up: `wait` follows the PID file, `await_startup` the boot
  ctl -q -n "$(node_name "$i")" wait "$(node_dir "$i")/rabbit.pid" --timeout "$START_TIMEOUT" >/dev/null
  ctl -q -n "$(node_name "$i")" await_startup --timeout "$START_TIMEOUT"
}

clustered() {  # node $1 runs in one cluster with n1
  ctl -q -n "$(node_name "$1")" cluster_status --formatter json 2>/dev/null | grep -q '"n1@localhost"'
}

up() {
  for i in "${NODES[@]}"; do start_node "$i"; done  # all at once: restarted nodes wait for their peers
  for i in "${NODES[@]}"; do await_node "$i"; done
  for i in 2 3; do
    if ! clustered "$i"; then
      echo "cluster: $(node_name "$i") joins $(node_name 1)"
      quiet ctl -q -n "$(node_name "$i")" stop_app
      quiet ctl -q -n "$(node_name "$i")" reset
      quiet ctl -q -n "$(node_name "$i")" join_cluster "$(node_name 1)"
      quiet ctl -q -n "$(node_name "$i")" start_app
      quiet ctl -q -n "$(node_name "$i")" await_startup --timeout "$START_TIMEOUT"
    fi
  done
  echo "cluster: up — ESI_AMQP_URL=$(urls)"
}

down() {
  for i in "${NODES[@]}"; do
    local pid_file
    pid_file="$(node_dir "$i")/rabbit.pid"
    if running "$i"; then
      echo "cluster: stopping $(node_name "$i")"
      ctl -q -n "$(node_name "$i")" stop "$pid_file" >/dev/null 2>&1 || true
    fi
    if [ -f "$pid_file" ]; then
      local pid
      pid="$(cat "$pid_file")"
      if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    fi
  done
  rm -rf "$BASE"
}

kill_node() {
  local pid_file
  pid_file="$(node_dir "$1")/rabbit.pid"
  [ -f "$pid_file" ] || { echo "cluster: $(node_name "$1") has no PID file" >&2; exit 1; }
  echo "cluster: kill -9 $(node_name "$1")"
  kill -9 "$(cat "$pid_file")"
}

status() {
  for i in "${NODES[@]}"; do
    if running "$i"; then echo "$(node_name "$i") running (127.0.0.1:568$i)"; else echo "$(node_name "$i") stopped"; fi
  done
  if running 1; then ctl -q -n "$(node_name 1)" cluster_status; fi
}

urls() {
  local vhost="${1:-}" out="" i
  for i in "${NODES[@]}"; do out="$out${out:+,}amqp://guest:guest@127.0.0.1:568$i/$vhost"; done
  echo "$out"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  start) start_node "${2:?node number}"; await_node "$2" ;;
  kill) kill_node "${2:?node number}" ;;
  urls) urls "${2:-}" ;;
  *) echo "usage: $0 up|down|status|start N|kill N|urls [vhost]" >&2; exit 2 ;;
esac
