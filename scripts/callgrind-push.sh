#!/usr/bin/env bash
# User-space instructions per push, counted by callgrind: unlike req/s or CPU
# time, the count barely moves on a noisy machine, so two binaries can be
# compared one run each. `serve --dev` runs under valgrind on a free port;
# wrk (1 thread, 4 connections) warms it for 3 s, the counters are zeroed,
# then SECS seconds of wrapped `echo` pushes (each its own message id, one
# dev Google token) are counted and divided by the requests served. Prints
# the total and the 40 heaviest functions by inclusive count, per request.
#
#   scripts/callgrind-push.sh BINARY [SECS] [ENV=VALUE ...]
#
# e.g. scripts/callgrind-push.sh target/release/pushworker 8 RUST_LOG=warn
# Note: valgrind hides SHA-NI, so SHA-256 of the token (hardware-accelerated
# on the real CPU) shows as ~28k instructions per push here.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,14p "$0"; exit 2; }
bin=$(realpath "$1"); secs=${2:-8}; shift $(( $# >= 2 ? 2 : 1 ))
for tool in valgrind callgrind_control callgrind_annotate wrk; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install -y valgrind wrk"; exit 1; }
done
work=$(mktemp -d); trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/push.lua" <<'LUA'
counter = 0
function init(args) token = os.getenv("TOKEN") end
function request()
  counter = counter + 1
  local body = '{"message":{"data":"eyJtZXNzYWdlIjoiaGVsbG8gZnJvbSB0aGUgYmVuY2gifQ==","attributes":{"job":"echo"},"messageId":"' .. os.getenv("RUN") .. '-' .. counter .. '","publishTime":"2026-11-28T12:00:00.000Z"},"subscription":"projects/bench-project/subscriptions/work-push"}'
  return wrk.format("POST", "/pubsub/push", {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body)
end
LUA
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -i PATH="$PATH" HOME="$HOME" PORT="$port" LOG_FORMAT=json DEV_DIR="$work/dev" "$@" \
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bin" serve --dev >/dev/null 2>"$work/valgrind.log" &
pid=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
TOKEN=$("$bin" dev-token --dev-dir "$work/dev" google 2>/dev/null); export TOKEN
# The warm-up's ids and the counted run's differ: a repeat would be a
# duplicate, answered without running.
RUN=warm wrk -t1 -c4 -d3s -s "$work/push.lua" "http://127.0.0.1:$port" >/dev/null
callgrind_control -z "$pid" >/dev/null
n=$(RUN=counted wrk -t1 -c4 -d"${secs}s" -s "$work/push.lua" "http://127.0.0.1:$port" | awk '/requests in/ {print $1}')
callgrind_control -d "$pid" >/dev/null
sleep 1
dump=$(ls -t "$work"/cg.out.* | head -1)
total=$(callgrind_annotate "$dump" | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "requests=$n instructions_per_request=$(( total / n ))"
callgrind_annotate --inclusive=yes "$dump" | sed 's/::h[0-9a-f]\{16\}//g' \
  | awk -v n="$n" '/\?\?\?:|\.c:|\.S:/ {gsub(",","",$1); printf "%8d  %s\n", $1/n, substr($0, index($0,$3), 150)}' \
  | grep -v 'tokio::runtime\|std::sys\|clone.S\|pthread\|thread_start\|call_once\|backtrace' | head -40
