#!/usr/bin/env bash
# A/B of two pushworker binaries on the same load, interleaved, so that a
# noisy machine hits both alike. Each run: `serve --dev` on a free port, 3 s
# of warm-up, then wrk (2 threads, 32 connections, DUR seconds) posting
# wrapped pushes of the echo job, each with its own message id, with one dev
# Google token; with LOAD=manual instead, a Clerk user's `POST /jobs/echo`
# with one dev Clerk token (make bench's scenario 3). Prints per run: req/s,
# p99, the worker's CPU per request (utime+stime from /proc/PID/stat over the
# requests served), its RSS when ready and idle (all, and the anonymous part
# alone), and its peak RSS. The file-backed part of the idle RSS depends on
# how the binary's pages came into the page cache: a freshly copied binary
# shows about 2 MB more than the same one read back from disk, so compare
# the anonymous part, or binaries copied the same way.
# The worker's stdout goes to /dev/null, or with STDOUT=pipe to a pipe that
# `cat` drains, as a platform's log collector reads it. With FRESH_DB=HOST:PORT
# each run gets a fresh PostgreSQL database (user postgres, trust auth) as its
# DATABASE_URL, dropped after it.
#
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY [PAIRS] [ENV=VALUE ...]
#
# e.g. build the old revision in a worktree, then
#   scripts/bench-ab.sh /tmp/old/target/release/pushworker target/release/pushworker 5 RUST_LOG=warn
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,22p "$0"; exit 2; }
old=$1 new=$2 pairs=${3:-3}; shift $(( $# >= 3 ? 3 : 2 ))
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }
DUR=${DUR:-5}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cat > "$work/push.lua" <<'LUA'
counter = 0
local threads = {}
function setup(thread) table.insert(threads, thread); thread:set("tid", #threads) end
function init(args)
  token = os.getenv("TOKEN")
  -- Each wrk run's ids are its own: a repeat of the warm-up's would be a
  -- duplicate, answered without running.
  run = os.getenv("RUN")
  template = '{"message":{"data":"eyJtZXNzYWdlIjoiaGVsbG8gZnJvbSB0aGUgYmVuY2gifQ==","attributes":{"job":"echo"},"messageId":"@ID@","publishTime":"2026-11-28T12:00:00.000Z"},"subscription":"projects/bench-project/subscriptions/work-push"}'
end
function request()
  counter = counter + 1
  if os.getenv("LOAD") == "manual" then
    return wrk.format("POST", "/jobs/echo", {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, '{"message":"hello from the bench"}')
  end
  local body = (string.gsub(template, "@ID@", run .. "-" .. tid .. "-" .. counter))
  return wrk.format("POST", "/pubsub/push", {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body)
end
LUA
one() {
  local bin=$1; shift
  local db=
  if [ -n "${FRESH_DB:-}" ]; then
    db="ab_$RANDOM$RANDOM"
    createdb -h "${FRESH_DB%:*}" -p "${FRESH_DB##*:}" -U postgres "$db"
    set -- "$@" DATABASE_URL="postgres://postgres@$FRESH_DB/$db"
  fi
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if [ "${STDOUT:-null}" = pipe ]; then exec 3> >(cat >/dev/null); else exec 3>/dev/null; fi
  env -i PATH="$PATH" HOME="$HOME" PORT="$port" LOG_FORMAT=json DEV_DIR="$work/dev" "$@" "$bin" serve --dev >&3 2>/dev/null &
  exec 3>&-
  local pid=$!
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
  local idle anon
  idle=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  anon=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status")
  local kind=(google); [ "${LOAD:-push}" = manual ] && kind=(clerk --azp "http://localhost:$port")
  TOKEN=$("$bin" dev-token --dev-dir "$work/dev" "${kind[@]}" 2>/dev/null); export TOKEN
  RUN="w$RANDOM$RANDOM" wrk -t2 -c32 -d3s -s "$work/push.lua" "http://127.0.0.1:$port" >/dev/null
  local c0 c1 out
  c0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  out=$(RUN="m$RANDOM$RANDOM" wrk -t2 -c32 -d"${DUR}s" --latency -s "$work/push.lua" "http://127.0.0.1:$port")
  c1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  local req; req=$(echo "$out" | awk '/requests in/ {print $1}')
  printf 'rps=%s non2xx=%s p99=%s cpu_us_per_req=%s idle_rss_kb=%s idle_anon_kb=%s peak_rss_kb=%s\n' \
    "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk '/Non-2xx/ {print $NF}' | grep . || echo 0)" \
    "$(echo "$out" | awk '$1 == "99%" {print $2}')" \
    "$(( (c1 - c0) * 10000 / req ))" "$idle" "$anon" \
    "$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [ -z "$db" ] || dropdb -h "${FRESH_DB%:*}" -p "${FRESH_DB##*:}" -U postgres "$db"
}
for i in $(seq 1 "$pairs"); do
  printf 'pair %s old ' "$i"; one "$old" "$@"
  printf 'pair %s new ' "$i"; one "$new" "$@"
done
