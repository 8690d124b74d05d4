#!/usr/bin/env bash
# A one-node Grid Engine on this machine, for trying the gridengine backend by hand and for
# tests/integration/test_gridengine_script.py (issue 15). Root only.
#
#   bash tests/cluster/gridengine.sh up     # (re)start it; the last line is a jlabgw config path
#   bash tests/cluster/gridengine.sh down   # stop every process of it and remove its files
#
#   JLABGW_CONFIG=$(bash tests/cluster/gridengine.sh up | tail -1) jlabgw doctor
#
# `up`: sge_qmaster + sge_execd (Son of Grid Engine 8.1.9, tests/gridengine.py: queue jlabgw.q,
# PE smp, the scheduler tuned so a job starts within about a second), a login sshd on
# 127.0.0.1 for the test user whose sessions have SGE_ROOT and the cluster's ports (sshd's
# SetEnv, tests/sshd.py), and a jlabgw config for a client here: qsub over SSH as the test user,
# the job's gateway reached through the same sshd (this machine is the compute node too). The
# daemons run in sessions of their own and outlive the command. Its root, ports, job ids and
# gid_range are its own: it coexists with the clusters the tests start.
# `down`: qconf -kej / -km, then SIGKILL to whatever of it is left (jobs, SSH sessions), the
# sshd stopped; idempotent, also after a failed `up`. Every wait is bounded.
#
# Settings: JLABGW_GRIDENGINE_DIR (state dir, default /run/jlabgw-gridengine: everything this
# script creates is there, but for the sshd's authorized_keys file in the test user's ~/.ssh),
# JLABGW_TEST_USER (default jlabgw-test), JLABGW_TEST_JOB_VENV (the jobs' Python, default
# /opt/jlabgw-test/job-venv). Needs tests/cluster/setup-system.sh and setup-gridengine.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${JLABGW_GRIDENGINE_DIR:-/run/jlabgw-gridengine}"
UP_TIMEOUT=240   # seconds for `up` (it takes ~1-2 s)
DOWN_TIMEOUT=120 # seconds for `down` (it takes ~1-2 s)

log() { printf '%s\n' "gridengine: $*" >&2; }
die() {
  log "$*"
  exit 1
}

# PY: the project's venv (tests/gridengine.py imports jlabgw's test helpers), else python3
choose_python() {
  if [ -x "$REPO/.venv/bin/python" ]; then
    PY="$REPO/.venv/bin/python"
    return
  fi
  PY="$(command -v python3)" || die "neither $REPO/.venv/bin/python nor python3 found"
  (cd "$REPO" && "$PY" -c 'import tests.gridengine' 2>/dev/null) ||
    die "$PY cannot import tests.gridengine: it needs jlabgw and its dependencies (make the venv, see README's Development)"
}

# One `up` or `down` at a time: a lock on this script itself (no lock file to leave behind).
# Python's subprocesses close fd 9, so no daemon keeps the lock.
lock() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  [[ $STATE =~ ^/[A-Za-z0-9._/-]+$ ]] ||
    die "JLABGW_GRIDENGINE_DIR must be an absolute path of [A-Za-z0-9._/-]"
  exec 9<"${BASH_SOURCE[0]}"
  flock -w 60 9 || die "another gridengine.sh up/down is still running"
}

ge() { # ge up|down: the work, in tests/gridengine.py, bounded in time
  local timeout=$1
  shift
  (cd "$REPO" && timeout --foreground -k 10 "$timeout" "$PY" -m tests.gridengine "$@" --state "$STATE")
}

case "${1:-}" in
  up)
    lock
    choose_python
    if ! ge "$UP_TIMEOUT" up; then
      # (a failing `up` cleans up itself; not one that timeout had to SIGKILL)
      ge "$DOWN_TIMEOUT" down || true
      die "up failed"
    fi
    ;;
  down)
    lock
    choose_python
    ge "$DOWN_TIMEOUT" down
    ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
