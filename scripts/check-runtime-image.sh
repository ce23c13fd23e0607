#!/usr/bin/env bash
# Checks that a pushworker binary will run in gcr.io/distroless/cc-debian12,
# without building or running the image (this machine has no container engine):
#
#   1. it links only libraries the image provides (glibc, libm, libgcc_s, the
#      loader), and needs no newer glibc than the image's (2.36);
#   2. it starts with an empty environment apart from its configuration (no
#      HOME, no PATH, as in the image), answers GET /healthz with 200, and on
#      SIGTERM (what Cloud Run sends) exits 0 within 15 s.
#
# Usage: scripts/check-runtime-image.sh BINARY
set -euo pipefail

BINARY=${1:?usage: $0 BINARY}
[[ -x $BINARY ]] || { echo "error: $BINARY is not an executable file" >&2; exit 2; }
BINARY=$(realpath "$BINARY")

# glibc version of debian12 (bookworm), the base of distroless/cc-debian12.
RUNTIME_GLIBC=2.36

# --- 1. Shared libraries ------------------------------------------------------

echo "== shared libraries (ldd $BINARY)"
ldd_out=$(ldd "$BINARY" 2>&1) || true
echo "$ldd_out"
if grep -qE 'not a dynamic executable|statically linked' <<<"$ldd_out"; then
  echo "ok: statically linked"
else
  bad=()
  while IFS= read -r line; do
    [[ -z ${line//[[:space:]]/} ]] && continue
    if [[ $line == *"not found"* ]]; then
      bad+=("$line")
      continue
    fi
    lib=$(awk '{print $1}' <<<"$line")
    case "$(basename "$lib")" in
      linux-vdso.so.1 | ld-linux-x86-64.so.2 | libc.so.6 | libm.so.6 | libgcc_s.so.1 | \
        libpthread.so.0 | libdl.so.2 | librt.so.1) ;;
      *) bad+=("$line") ;;
    esac
  done <<<"$ldd_out"
  if ((${#bad[@]})); then
    echo "FAIL: libraries that distroless/cc does not provide:" >&2
    printf '  %s\n' "${bad[@]}" >&2
    exit 1
  fi
  echo "ok: only libraries distroless/cc provides"

  if command -v objdump >/dev/null; then
    needed=$(objdump -T "$BINARY" | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sed 's/GLIBC_//' | sort -uV | tail -n1)
    if [[ -n $needed ]] && [[ $(printf '%s\n%s\n' "$needed" "$RUNTIME_GLIBC" | sort -V | tail -n1) != "$RUNTIME_GLIBC" ]]; then
      echo "FAIL: the binary needs glibc $needed; distroless/cc-debian12 has $RUNTIME_GLIBC (build on bookworm)" >&2
      exit 1
    fi
    echo "ok: needs glibc ${needed:-?} (image has $RUNTIME_GLIBC)"
  fi
fi

# --- 2. Start, health, SIGTERM ----------------------------------------------------

free_port() {
  if command -v python3 >/dev/null; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  else
    local p
    while :; do
      p=$((20000 + RANDOM % 40000))
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
  fi
}

PORT=$(free_port)
LOG=$(mktemp)
PID=
cleanup() {
  if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -f "$LOG"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  echo "--- worker output ---" >&2
  cat "$LOG" >&2
  exit 1
}

echo "== start with an empty environment on port $PORT"
env -i PORT="$PORT" \
  GOOGLE_AUDIENCES=x \
  GOOGLE_SERVICE_ACCOUNTS=a@b.iam.gserviceaccount.com \
  GOOGLE_JWKS_URL=file:///nonexistent/jwks.json \
  "$BINARY" serve >"$LOG" 2>&1 &
PID=$!

status=
for _ in $(seq 1 50); do # 10 s
  kill -0 "$PID" 2>/dev/null || { wait "$PID" && rc=0 || rc=$?; PID=; fail "the worker exited (status $rc) before answering /healthz"; }
  status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$PORT/healthz" || true)
  [[ $status == 200 ]] && break
  sleep 0.2
done
[[ $status == 200 ]] || fail "GET /healthz did not answer 200 within 10 s (last: ${status:-no answer})"
echo "ok: GET /healthz answered 200"

echo "== SIGTERM"
kill -TERM "$PID"
exited=
for _ in $(seq 1 150); do # 15 s
  if ! kill -0 "$PID" 2>/dev/null; then exited=1; break; fi
  sleep 0.1
done
[[ -n $exited ]] || fail "still running 15 s after SIGTERM (Cloud Run kills it after 10 s)"
wait "$PID" && rc=0 || rc=$?
PID=
[[ $rc == 0 ]] || fail "exited with status $rc after SIGTERM (expected 0)"
echo "ok: exited 0 after SIGTERM"
echo "runtime image check passed"
