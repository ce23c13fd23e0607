#!/usr/bin/env bash
# Makes sure everything `make test` needs is on this machine, installing what
# is missing when it can, and says exactly what to run when it cannot. Run by
# `make test` (all steps) and `make e2e` (the browser); safe to run again: a
# step that finds its tool already there costs nothing.
#
#   browser   Debian's chromium and chromium-driver (tests/admin_e2e.rs)
#   postgres  PostgreSQL on 127.0.0.1:5432, user postgres, trust auth (the run
#             ledger's tests), started if installed but stopped
#   emulator  gcloud with its Pub/Sub emulator, and the Java it runs on
#             (tests/api/emulator.rs)
#   venv      the Python tools listed in requirements-test.txt, in .venv/
#   tools     curl and python3 (scripts/check-runtime-image.sh)
#
# Usage: scripts/test-prereqs.sh [STEP...]      (no step: all of them)
#
# As root (CI, this project's machines) it installs Debian's packages itself;
# otherwise it stops at the first missing piece with the command to run.
# Environment: CHROMIUM, CHROMEDRIVER (programs, as tests/admin_e2e.rs reads
# them), PUSHWORKER_TEST_PG (host:port, as tests/api/helpers.rs reads it),
# PUSHWORKER_TEST_VENV (the virtualenv's folder, default .venv),
# REQUIREMENTS_TEST (default requirements-test.txt), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'test-prereqs: %s\n' "$*"; }
# Prints a command, then runs it, so the output shows every install step.
run() {
  printf 'test-prereqs: + %s\n' "$*"
  "$@"
}
# Stops with what to run by hand.
stop() {
  printf 'test-prereqs: MISSING: %s\n' "$1" >&2
  shift
  printf 'test-prereqs: run this, then `make test` again:\n' >&2
  printf '    %s\n' "$@" >&2
  exit 1
}
is_root() { [[ $(id -u) == 0 ]]; }
sudo_prefix() { is_root || printf 'sudo '; }

APT_UPDATED=
# Installs Debian packages as root, or stops with the command for them.
apt_install() {
  local why=$1
  shift
  local cmd="DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq $*"
  if ! is_root; then
    stop "$why" "sudo sh -c '$cmd'"
  fi
  if ! command -v apt-get >/dev/null; then
    stop "$why (and this machine has no apt-get)" "install the equivalent of Debian's: $*"
  fi
  say "installing $* ($why)"
  export DEBIAN_FRONTEND=noninteractive
  if [[ -z $APT_UPDATED ]]; then
    apt_run apt-get update -qq
    APT_UPDATED=1
  fi
  apt_run apt-get install -y -qq "$@"
}

# apt's own output goes to a log, shown only when the command fails.
APT_LOG=${TMPDIR:-/tmp}/pushworker-test-prereqs-apt.log
apt_run() {
  printf 'test-prereqs: + %s   (output in %s)\n' "$*" "$APT_LOG"
  if ! "$@" >>"$APT_LOG" 2>&1; then
    tail -n 40 "$APT_LOG" >&2
    stop "\`$*\` failed (above, the end of $APT_LOG)" "$*"
  fi
}

# --- browser -------------------------------------------------------------------
step_browser() {
  local chromium=${CHROMIUM:-/usr/bin/chromium}
  local driver=${CHROMEDRIVER:-/usr/bin/chromedriver}
  if [[ -n ${CHROMIUM:-} || -n ${CHROMEDRIVER:-} ]]; then
    # Pointed elsewhere on purpose: check those programs, install nothing.
    [[ -x $chromium ]] || stop "CHROMIUM=$chromium is not a program" "unset CHROMIUM, or point it at Chromium"
    [[ -x $driver ]] || stop "CHROMEDRIVER=$driver is not a program" "unset CHROMEDRIVER, or point it at ChromeDriver"
  elif [[ ! -x $chromium || ! -x $driver ]]; then
    apt_install "Chromium and ChromeDriver for the admin page's browser tests" chromium chromium-driver
  fi
  local version
  # Debian's launcher script complains on stderr about its own settings.
  version=$("$chromium" --version 2>/dev/null) || stop "$chromium does not start: $("$chromium" --version 2>&1 | tail -n1)" \
    "$(sudo_prefix)apt-get install --reinstall -y chromium chromium-driver"
  say "browser: $version; $("$driver" --version 2>/dev/null | head -n1)"
}

# --- postgres ------------------------------------------------------------------
step_postgres() {
  local addr=${PUSHWORKER_TEST_PG:-127.0.0.1:5432}
  local host=${addr%:*} port=${addr##*:}
  if [[ -n ${PUSHWORKER_TEST_PG:-} ]]; then
    # A server of the caller's choosing: only check that it answers.
    pg_answers "$host" "$port" || stop "no PostgreSQL answers at PUSHWORKER_TEST_PG=$addr" \
      "start it, or unset PUSHWORKER_TEST_PG to use the local one on 127.0.0.1:5432"
  else
    if ! command -v pg_ctlcluster >/dev/null || [[ -z $(ls /etc/postgresql 2>/dev/null) ]]; then
      apt_install "PostgreSQL for the run ledger's tests" postgresql
    fi
    if ! pg_answers "$host" "$port"; then
      local version
      version=$(ls /etc/postgresql | sort -V | tail -n1)
      if is_root; then
        say "PostgreSQL $version is installed but not running: starting it"
        run pg_ctlcluster --skip-systemctl-redirect "$version" main start
      else
        stop "PostgreSQL $version is installed but not running" \
          "sudo pg_ctlcluster --skip-systemctl-redirect $version main start"
      fi
      local i
      for i in $(seq 1 30); do
        pg_answers "$host" "$port" && break
        sleep 0.5
      done
      pg_answers "$host" "$port" || stop "PostgreSQL does not answer on $addr after starting" \
        "see /var/log/postgresql/, then $(sudo_prefix)pg_ctlcluster --skip-systemctl-redirect $version main start"
    fi
  fi
  # The tests sign in as postgres without a password and create databases.
  if ! PGCONNECT_TIMEOUT=5 psql -X -q -h "$host" -p "$port" -U postgres -d postgres -w \
    -c 'select 1' >/dev/null 2>&1; then
    stop "PostgreSQL on $addr refuses user postgres without a password (the tests need trust auth there)" \
      "put 'host all postgres 127.0.0.1/32 trust' first in pg_hba.conf, then $(sudo_prefix)pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main reload" \
      "or point PUSHWORKER_TEST_PG at a server that lets postgres in (host:port)"
  fi
  say "postgres: answers on $addr as user postgres"
}

pg_answers() {
  if command -v pg_isready >/dev/null; then
    pg_isready -q -h "$1" -p "$2" -t 3
  else
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
  fi
}

# --- emulator ------------------------------------------------------------------
step_emulator() {
  if ! command -v java >/dev/null; then
    apt_install "Java for the Pub/Sub emulator" default-jre-headless
  fi
  if ! command -v gcloud >/dev/null || ! emulator_installed; then
    # gcloud and its emulator come from Google's Debian repository.
    local pkgs="google-cloud-cli google-cloud-cli-pubsub-emulator"
    if command -v apt-cache >/dev/null &&
      apt-cache policy google-cloud-cli-pubsub-emulator 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      # shellcheck disable=SC2086
      apt_install "gcloud and its Pub/Sub emulator for the emulator tests" $pkgs
    else
      stop "gcloud with its Pub/Sub emulator (for tests/api/emulator.rs), from Google's Debian repository, which this machine's apt does not list" \
        "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | $(sudo_prefix)gpg --dearmor -o /usr/share/keyrings/cloud.google.gpg" \
        "echo 'deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt cloud-sdk main' | $(sudo_prefix)tee /etc/apt/sources.list.d/google-cloud-sdk.list" \
        "$(sudo_prefix)sh -c 'apt-get update -qq && apt-get install -y -qq $pkgs'" \
        "(or, with gcloud from Google's own installer: gcloud components install beta pubsub-emulator)"
    fi
    emulator_installed || stop "gcloud has no Pub/Sub emulator" "$(sudo_prefix)apt-get install -y google-cloud-cli-pubsub-emulator"
  fi
  say "emulator: gcloud's pubsub-emulator in $(sdk_root)/platform/pubsub-emulator, $(java -version 2>&1 | head -n1)"
}

# gcloud's installation: bin/gcloud sits in it (Debian's package and Google's
# installer alike); `gcloud info` says so too, but slower.
sdk_root() {
  local bin
  bin=$(readlink -f "$(command -v gcloud)") || return 1
  if [[ -d $(dirname "$bin")/../platform ]]; then
    (cd "$(dirname "$bin")/.." && pwd)
  else
    gcloud info --format='value(installation.sdk_root)' 2>/dev/null
  fi
}

emulator_installed() {
  local root
  root=$(sdk_root) || return 1
  [[ -n $root && -d $root/platform/pubsub-emulator ]]
}

# --- venv ----------------------------------------------------------------------
# Tests that use a Python tool find it in $PUSHWORKER_TEST_VENV/bin (`make test`
# exports the variable; default .venv). The venv is made, and the tools in
# requirements-test.txt installed, on first use and again whenever that file
# changes; with no tool listed there is nothing to do.
step_venv() {
  local venv=${PUSHWORKER_TEST_VENV:-.venv}
  local reqs=${REQUIREMENTS_TEST:-requirements-test.txt}
  local python=${PYTHON:-python3}
  if [[ ! -f $reqs ]] || ! grep -qvE '^[[:space:]]*(#|$)' "$reqs"; then
    say "venv: $reqs lists no Python tool: nothing to install"
    return
  fi
  local want have=
  want=$(sha256sum "$reqs" | cut -d' ' -f1)
  [[ -f $venv/.requirements.sha256 ]] && have=$(cat "$venv/.requirements.sha256")
  if [[ -x $venv/bin/python && $want == "$have" ]]; then
    say "venv: $venv holds $reqs as it is"
    return
  fi
  command -v "$python" >/dev/null || apt_install "Python for the test tools" python3 python3-venv
  if [[ ! -x $venv/bin/python ]]; then
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
      apt_install "Python's venv module for the test tools" python3-venv
    fi
    say "venv: creating $venv for the Python test tools"
    run "$python" -m venv "$venv"
  fi
  say "venv: installing $reqs into $venv"
  run "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs"
  printf '%s\n' "$want" >"$venv/.requirements.sha256"
}

# --- tools ---------------------------------------------------------------------
step_tools() {
  local missing=()
  command -v curl >/dev/null || missing+=(curl)
  command -v python3 >/dev/null || missing+=(python3)
  ((${#missing[@]} == 0)) || apt_install "tools scripts/check-runtime-image.sh uses" "${missing[@]}"
  say "tools: curl, python3"
}

main() {
  local steps=("$@") step
  ((${#steps[@]})) || steps=(tools postgres emulator browser venv)
  for step in "${steps[@]}"; do
    case $step in
      browser | postgres | emulator | venv | tools) "step_$step" ;;
      *)
        echo "usage: $0 [browser|postgres|emulator|venv|tools ...]" >&2
        exit 2
        ;;
    esac
  done
}

# Sourced (to try one function), it defines them and runs nothing.
[[ ${BASH_SOURCE[0]} != "$0" ]] || main "$@"
