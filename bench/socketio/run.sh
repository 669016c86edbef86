#!/usr/bin/env bash
# Socket.IO side by side: the Node system (socket.io 4 in ../ref/node-ws) and any server given as
# NAME='start command with {port}', each pinned to CPU 0, the official socket.io-client (Node) on CPU 1.
#   (cd /tmp && REPEAT=1 /path/to/bench/socketio/run.sh miaws='exec /path/to/.venv/bin/miaws serve --port {port}')
# (Copied from the team's shared Socket.IO bench, echo.js and idle.js verbatim; added here:
# the room broadcast, broadcast.js, skipped with BROADCAST=0, and BENCH_HOME's default of
# bench/run.py.)
# Prints per server: echo acks/s with p50/p99 (50 clients x 10 in flight, 5 s after 1 s warm-up,
# REPEAT runs, median), room broadcast deliveries/s (1000 members of one room, one of them sending, 4
# broadcasts in flight, 5 s after 1 s warm-up, one run) and RSS growth per idle connection at 2000
# connections, with the connects/s of opening them (50 at a time). With each load the server's CPU
# time (user + system, /proc) over the measured window: µs per echo ack and per broadcast
# delivery, less disturbed by other load on the machine than the rates. Servers must answer
# GET /health when ready. Writes under ${BENCH_HOME:-$HOME/.cache/ws-bench}/socketio.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOME_DIR="${BENCH_HOME:-$HOME/.cache/miaws-bench}/socketio"
BROADCAST="${BROADCAST:-1}"
REPEAT="${REPEAT:-3}"
mkdir -p "$HOME_DIR"
if [ ! -d "$HOME_DIR/node_modules/socket.io-client" ]; then
  cp "$HERE/package.json" "$HERE/package-lock.json" "$HERE/echo.js" "$HERE/idle.js" "$HOME_DIR/"
  (cd "$HOME_DIR" && npm ci --no-audit --no-fund --silent >&2)
fi
cp "$HERE/echo.js" "$HERE/idle.js" "$HERE/broadcast.js" "$HOME_DIR/"
NODE_DIR="${BENCH_HOME:-$HOME/.cache/miaws-bench}/node-ws"
[ -d "$NODE_DIR/node_modules" ] || { echo "run bench/run.py --servers node-ws --scenarios echo --duration 1 once first (it installs the node-ws server in $NODE_DIR)" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
start() { # cmd port -> pid (started pinned to CPU 0 in its own session, from the caller's directory)
  local cmd=${1//\{port\}/$2}
  setsid taskset -c 0 sh -c "$cmd" >>"$HOME_DIR/servers.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$2/health" && break; sleep 0.2; done
  echo "$pid"
}
stop() { kill "$1" 2>/dev/null || true; sleep 0.5; kill -9 "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
servers=("node-sio=PORT={port} HOST=127.0.0.1 LOG_LEVEL=warn exec node $NODE_DIR/server.js" "$@")
printf '| server | echo acks/s (median of %s) | p50 ms | p99 ms | server CPU µs per ack | broadcast deliveries/s @1000 | server CPU µs per delivery | KiB per idle connection @2000 | connects/s |\n|---|---|---|---|---|---|---|---|---|\n' "$REPEAT"
for spec in "${servers[@]}"; do
  name=${spec%%=*}; cmd=${spec#*=}
  runs=()
  for _ in $(seq "$REPEAT"); do
    port=$(free_port); pid=$(start "$cmd" "$port")
    runs+=("$(cd "$HOME_DIR" && URL="http://127.0.0.1:$port" SERVER_PID="$pid" taskset -c 1 node echo.js)")
    stop "$pid"
  done
  med=$(printf '%s\n' "${runs[@]}" | python3 -c 'import json,sys; r=sorted((json.loads(l) for l in sys.stdin), key=lambda x: x.get("acks_per_s",0)); m=r[len(r)//2]; print(m.get("acks_per_s"), m.get("p50_ms"), m.get("p99_ms"), m.get("server_cpu_us_per_ack"))')
  bc=- bcpu=-
  if [ "$BROADCAST" != 0 ]; then
    port=$(free_port); pid=$(start "$cmd" "$port")
    read -r bc bcpu <<<"$(cd "$HOME_DIR" && URL="http://127.0.0.1:$port" SERVER_PID="$pid" taskset -c 1 node broadcast.js | python3 -c 'import json,sys; r=json.loads(sys.stdin.readline()); print(r.get("deliveries_per_s", "error"), r.get("server_cpu_us_per_delivery", "-"))')" || bc=error
    stop "$pid"
  fi
  port=$(free_port); pid=$(start "$cmd" "$port"); sleep 1; r0=$(rss "$pid")
  : >"$HOME_DIR/idle.out"
  (cd "$HOME_DIR" && URL="http://127.0.0.1:$port" N=2000 HOLD=6 taskset -c 1 node idle.js >"$HOME_DIR/idle.out") & g=$!
  # RSS once all are open (idle.js prints its line then and holds them HOLD seconds)
  for _ in $(seq 600); do [ -s "$HOME_DIR/idle.out" ] && break; sleep 0.1; done
  sleep 2; r1=$(rss "$pid"); wait "$g" || true; stop "$pid"
  cps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("connects_per_s", "-"))' "$HOME_DIR/idle.out" 2>/dev/null || echo -)
  read -r a p50 p99 cpu <<<"$med"
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$a" "$p50" "$p99" "$cpu" "$bc" "$bcpu" "$(( (r1 - r0) / 2000 ))" "$cps"
done
