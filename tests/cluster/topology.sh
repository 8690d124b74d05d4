#!/usr/bin/env bash
# A laptop / login node / two compute nodes cluster on this one machine, in network namespaces,
# for end-to-end tests of the SLURM path through a real jump host (issue 14). Root only.
#
#   bash tests/cluster/topology.sh up     # (re)build it; the last line is a jlabgw config path
#   bash tests/cluster/topology.sh down   # remove every process, namespace, link and file of it
#
#   laptop (root namespace)        login (netns)                       c1, c2 (netns)
#   jlgw-login 10.231.0.1/30 ---- eth0 10.231.0.2/30
#                                  br0 10.231.1.1/24 -- vc1 ------------ eth0 10.231.1.11/24 (c1)
#                                                    \- vc2 ------------ eth0 10.231.1.12/24 (c2)
#
# The laptop reaches only the login node (root has an `unreachable` route for 10.231.0.0/16, and
# the login namespace does not forward); compute nodes are reached by jumping through it. The
# route also covers the login node's own address: while a test takes jlgw-login down, packets
# for 10.231.0.2 fail here at once instead of leaving by the machine's default route.
# login runs slurmctld and sshd; c1 and c2 run slurmd and an sshd that admits a user only while
# they have a running job on that node (adopt.sh: pam_slurm_adopt emulated). One munged in the
# root namespace serves all (its socket is a file path). Each node is one process tree in its
# own network, mount and UTS namespaces (node.sh): hostname login/c1/c2, the cluster's
# /etc/hosts, /etc/slurm and /etc/ssh bind-mounted privately, so plain sbatch/squeue/ssh work in
# SSH sessions there. The filesystem (the user's home, /opt) is shared, like a cluster's.
#
# Settings: JLABGW_TOPOLOGY_DIR (state dir, default /run/jlabgw-topology: everything this script
# creates is there or in the namespaces), JLABGW_TEST_USER (default jlabgw-test),
# JLABGW_TEST_JOB_VENV (the jobs' Python, default /opt/jlabgw-test/job-venv). The user and the
# venv come from tests/cluster/setup-system.sh.
set -euo pipefail
unset SLURM_CONF

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATES="$HERE/topology"
STATE="${JLABGW_TOPOLOGY_DIR:-/run/jlabgw-topology}"
TEST_USER="${JLABGW_TEST_USER:-jlabgw-test}"
JOB_VENV="${JLABGW_TEST_JOB_VENV:-/opt/jlabgw-test/job-venv}"
MARKER=".jlabgw-topology"

NODES=(login c1 c2)
COMPUTE=(c1 c2)
ROOT_LINK=jlgw-login              # the laptop's end of the veth pair to the login node
LAPTOP_ADDR=10.231.0.1
LOGIN_EXTERNAL=10.231.0.2         # the login node as the laptop sees it
EXTERNAL_PREFIX=30
LOGIN_INTERNAL=10.231.1.1         # the login node on the cluster network (bridge br0)
INTERNAL_NET=10.231.1.0/24
TOPOLOGY_NET=10.231.0.0/16        # every address above: unreachable from the laptop but by a link
INTERNAL_PREFIX=24
declare -A NODE_ADDR=([c1]=10.231.1.11 [c2]=10.231.1.12)

log() { printf '%s\n' "topology: $*" >&2; }
die() {
  log "$*"
  exit 1
}
now() { date +%s%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }

# Bounded wait: until CMD succeeds, at most TRIES times, SLEEP seconds apart.
wait_for() {
  local tries=$1 pause=$2 what=$3
  shift 3
  local i
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    sleep "$pause"
  done
  log "timed out waiting for $what"
  return 1
}

render() { # render TEMPLATE DEST [extra sed expressions...]
  local template=$1 dest=$2
  shift 2
  sed -e "s|@STATE@|$STATE|g" -e "s|@USER@|$TEST_USER|g" -e "s|@JOB_VENV@|$JOB_VENV|g" \
    -e "s|@LOGIN_EXTERNAL@|$LOGIN_EXTERNAL|g" -e "s|@LOGIN_INTERNAL@|$LOGIN_INTERNAL|g" \
    -e "s|@C1_ADDR@|${NODE_ADDR[c1]}|g" -e "s|@C2_ADDR@|${NODE_ADDR[c2]}|g" "$@" \
    "$template" >"$dest"
}

# ------------------------------------------------------------------------------------------
# down: safe to run at any point, also after a failed or partial `up`, and when nothing is up.
# ------------------------------------------------------------------------------------------

netns_exists() { [ -e "/run/netns/$1" ]; }

alive() { # a pid that is not (yet) a zombie
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# Every live pid in the node namespaces: daemons, slurmstepd, jobs, SSH sessions.
netns_pids() {
  local ns pid
  for ns in "${NODES[@]}"; do
    if netns_exists "$ns"; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do
        if alive "$pid"; then
          echo "$pid"
        fi
      done
    fi
  done
}

# munged, the one process of ours in the root namespace: the munged whose command line names
# this state dir's socket (its pid file first; a scan in case the pid file was never written).
munged_pid() {
  local pid
  for pid in $(cat "$STATE/munge/munged.pid" 2>/dev/null) $(pgrep -x munged); do
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" &&
      tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--socket=$STATE/munge/munge.socket "; then
      echo "$pid"
      return 0
    fi
  done
}

munged_running() { [ -n "$(munged_pid)" ]; }

# The daemons that get a SIGTERM, by their pid files, each accepted only if it runs in one of
# our namespaces. Not slurmctld: it takes a second or more to save a state deleted anyway.
daemon_pids() {
  local in_ns=" $* " file pid
  for file in "$STATE"/slurm/slurmd-*.pid "$STATE"/nodes/*/sshd.pid; do
    pid=$(cat "$file" 2>/dev/null) || continue
    if [[ $pid =~ ^[0-9]+$ ]] && [[ $in_ns == *" $pid "* ]]; then
      echo "$pid"
    fi
  done
}

down() {
  local start i pid ours daemons left
  start=$(now)
  # SIGTERM to the daemons of the pid files (slurmd, sshd, munged: they exit at once), SIGKILL
  # to everything else in the namespaces (slurmctld, slurmstepd, which ignores SIGTERM, jobs, SSH
  # sessions, the namespace holders), and SIGKILL to whatever is left after 0.3 s.
  # Bounded: at most 40 rounds of 0.05 s.
  ours=$(netns_pids | tr '\n' ' ')
  daemons=" $(daemon_pids $ours | tr '\n' ' ') $(munged_pid) "
  for pid in $daemons; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $ours; do
    if [[ $daemons != *" $pid "* ]]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for ((i = 0; i < 40; i++)); do # at most 2 s
    left="$(netns_pids) $(munged_pid)"
    [ -n "${left// /}" ] || break
    for pid in $left; do # newcomers (a job script forked meanwhile) at once, daemons after 0.3 s
      if ((i >= 6)) || [[ $daemons != *" $pid "* ]]; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
    sleep 0.05
  done
  left="$(netns_pids) $(munged_pid)"
  if [ -n "${left// /}" ]; then
    log "warning: process(es) of the topology survived SIGKILL: $left"
  fi
  # Deleting a namespace deletes its interfaces, their veth peers and its (private) mounts.
  local ns
  for ns in "${NODES[@]}"; do
    if netns_exists "$ns"; then
      ip netns del "$ns" || log "warning: ip netns del $ns failed"
    fi
  done
  if ip link show "$ROOT_LINK" >/dev/null 2>&1; then
    ip link del "$ROOT_LINK" 2>/dev/null || true # gone already if login went with it
  fi
  local net
  for net in "$TOPOLOGY_NET" "$INTERNAL_NET"; do # (the latter: what older versions added)
    for ((i = 0; i < 5; i++)); do
      ip route show type unreachable "$net" 2>/dev/null | grep -q . || break
      ip route del unreachable "$net" || break
    done
  done
  # `ip netns add` made /run/netns (a bind mount of itself) if it was missing: undo that too,
  # unless other namespaces live there now.
  if [ -e "$STATE/created-run-netns" ] && [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
    if mountpoint -q /run/netns; then
      umount /run/netns || true
    fi
    rmdir /run/netns || true
  fi
  if [ -d "$STATE" ]; then
    if [ -e "$STATE/$MARKER" ]; then
      rm -rf "$STATE"
    else
      log "warning: $STATE exists but is not a topology state dir (no $MARKER): left alone"
    fi
  fi
  log "down in $(since "$start") s"
}

# ------------------------------------------------------------------------------------------
# up
# ------------------------------------------------------------------------------------------

check_prerequisites() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  [[ $STATE =~ ^/[A-Za-z0-9._/-]+$ ]] || die "JLABGW_TOPOLOGY_DIR must be an absolute path of [A-Za-z0-9._/-]"
  local tool
  for tool in ip nsenter unshare ssh-keygen mungekey munged slurmctld slurmd sinfo sshd runuser; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] ||
      die "$tool is missing (run tests/cluster/setup-system.sh)"
  done
  id "$TEST_USER" >/dev/null 2>&1 || die "user $TEST_USER does not exist (run tests/cluster/setup-system.sh)"
  [ -x "$JOB_VENV/bin/python" ] || die "no job Python at $JOB_VENV (run tests/cluster/setup-system.sh)"
}

write_files() {
  local node
  install -d -m 755 "$STATE"
  touch "$STATE/$MARKER"
  # The test user (jobs, sbatch over SSH) and nobody (sshd's AuthorizedKeysCommand) must reach
  # the munge socket and adopt.sh: every parent of the state dir must be searchable by all.
  runuser -u nobody -- test -x "$STATE" ||
    die "$STATE is not reachable by other users (a parent directory is private); pick another JLABGW_TOPOLOGY_DIR"
  install -d -m 755 "$STATE/munge" "$STATE/slurm" "$STATE/slurm/state" "$STATE/etc" \
    "$STATE/etc/slurm" "$STATE/bin" "$STATE/authorized_keys" "$STATE/nodes"
  install -d -m 700 "$STATE/laptop" "$STATE/laptop/state"
  install -d -m 755 "$STATE/laptop/notebooks"
  for node in "${COMPUTE[@]}"; do
    install -d -m 755 "$STATE/slurm/spool-$node"
  done

  mungekey -c -k "$STATE/munge/munge.key"

  # SLURM: the compute nodes declare this machine's hardware (the first line of `slurmd -C`).
  local hw
  hw=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]* //')
  # Job ids from 1,000,000 on, 50 per second of the clock (two `up`s are seconds apart, a
  # topology runs far fewer jobs than 50 a second), below SLURM's MaxJobId (67,043,328).
  local first_job_id=$((1000000 + ($(date +%s) % 1000000) * 50))
  render "$TEMPLATES/slurm.conf.in" "$STATE/etc/slurm/slurm.conf" -e "s|@NODE_HW@|$hw|g" \
    -e "s|@FIRST_JOB_ID@|$first_job_id|g"
  render "$TEMPLATES/hosts.in" "$STATE/etc/hosts"
  chmod 644 "$STATE/etc/slurm/slurm.conf" "$STATE/etc/hosts"

  # /etc/ssh of the nodes: the system's client config and moduli plus the site-wide
  # ssh_known_hosts (so `ssh c1` from the login node verifies the host key).
  install -d -m 755 "$STATE/etc/ssh"
  cp -a /etc/ssh/ssh_config /etc/ssh/moduli "$STATE/etc/ssh/"
  if [ -d /etc/ssh/ssh_config.d ]; then
    cp -a /etc/ssh/ssh_config.d "$STATE/etc/ssh/"
  fi

  # Host keys, one per node, and the site-wide known_hosts holding each by name and address.
  : >"$STATE/ssh_known_hosts"
  for node in "${NODES[@]}"; do
    install -d -m 755 "$STATE/nodes/$node"
    ssh-keygen -q -t ed25519 -N '' -C "$node" -f "$STATE/nodes/$node/ssh_host_ed25519_key"
    local names="$node"
    if [ "$node" = login ]; then
      names="login,$LOGIN_EXTERNAL,$LOGIN_INTERNAL"
    else
      names="$node,${NODE_ADDR[$node]}"
    fi
    printf '%s %s\n' "$names" "$(cut -d' ' -f1,2 "$STATE/nodes/$node/ssh_host_ed25519_key.pub")" \
      >>"$STATE/ssh_known_hosts"
    render "$TEMPLATES/sshd_config.in" "$STATE/nodes/$node/sshd_config" -e "s|@NODE@|$node|g"
  done
  chmod 644 "$STATE/ssh_known_hosts"
  cp "$STATE/ssh_known_hosts" "$STATE/etc/ssh/ssh_known_hosts"

  # The user's key pair: the private key stays with the laptop (root, 0600); the public key is
  # site-managed (like /etc/ssh/authorized_keys/%u), so nothing is written into the user's home.
  ssh-keygen -q -t ed25519 -N '' -C "$TEST_USER@laptop" -f "$STATE/laptop/id_ed25519"
  chmod 600 "$STATE/laptop/id_ed25519"
  install -m 644 "$STATE/laptop/id_ed25519.pub" "$STATE/authorized_keys/$TEST_USER"
  install -m 755 "$TEMPLATES/adopt.sh" "$STATE/bin/adopt.sh"
  printf 'AuthorizedKeysFile %s/authorized_keys/%%u\n' "$STATE" >>"$STATE/nodes/login/sshd_config"
  for node in "${COMPUTE[@]}"; do
    # pam_slurm_adopt emulated: keys only while the user has a running job on this node.
    # `/bin/sh script`: sshd checks only the first word's ownership and permissions.
    printf '%s\n' "AuthorizedKeysFile none" \
      "AuthorizedKeysCommand /bin/sh $STATE/bin/adopt.sh %u $STATE/authorized_keys" \
      "AuthorizedKeysCommandUser nobody" >>"$STATE/nodes/$node/sshd_config"
  done

  render "$TEMPLATES/ssh_config.in" "$STATE/laptop/ssh_config"
  render "$TEMPLATES/jlabgw.toml.in" "$STATE/laptop/jlabgw.toml"
}

make_network() {
  local node
  for node in "${NODES[@]}"; do
    ip netns add "$node"
    ip -n "$node" link set lo up
  done
  # laptop <-> login
  ip link add "$ROOT_LINK" type veth peer name eth0 netns login
  ip addr add "$LAPTOP_ADDR/$EXTERNAL_PREFIX" dev "$ROOT_LINK"
  ip link set "$ROOT_LINK" up
  ip -n login addr add "$LOGIN_EXTERNAL/$EXTERNAL_PREFIX" dev eth0
  ip -n login link set eth0 up
  # the cluster network: a bridge in the login namespace, one veth per compute node
  ip -n login link add br0 type bridge
  ip -n login addr add "$LOGIN_INTERNAL/$INTERNAL_PREFIX" dev br0
  ip -n login link set br0 up
  for node in "${COMPUTE[@]}"; do
    ip -n login link add "v$node" type veth peer name eth0 netns "$node"
    ip -n login link set "v$node" master br0
    ip -n login link set "v$node" up
    ip -n "$node" addr add "${NODE_ADDR[$node]}/$INTERNAL_PREFIX" dev eth0
    ip -n "$node" link set eth0 up
  done
  # No forwarding through the login node, and a wrong path from the laptop fails at once: also
  # the path to the login node while its link is down (its connected route is gone then, and
  # without this the default route would carry the packets out of the machine).
  nsenter --net=/run/netns/login sh -c 'echo 0 >/proc/sys/net/ipv4/ip_forward'
  ip route add unreachable "$TOPOLOGY_NET"
}

start_munged() {
  local m="$STATE/munge"
  setsid munged --foreground --force --key-file="$m/munge.key" --socket="$m/munge.socket" \
    --pid-file="$m/munged.pid" --log-file="$m/munged.log" --seed-file="$m/munged.seed" \
    </dev/null >>"$m/munged.out" 2>&1 9<&- &
  disown
  wait_for 100 0.05 "munged's socket" test -S "$m/munge.socket"
  wait_for 40 0.05 "munged's pid file" munged_running
}

start_node() {
  local node=$1 role=$2
  setsid nsenter --net="/run/netns/$node" unshare --mount --uts --propagation private \
    bash "$TEMPLATES/node.sh" "$node" "$role" "$STATE" \
    </dev/null >>"$STATE/nodes/$node/init.log" 2>&1 9<&- &
  disown # no "Killed" job notice when `down` ends it
}

daemons_alive() { # every daemon a node started is still there
  local file pid
  for file in "$STATE"/nodes/*/*.launched; do
    pid=$(cat "$file")
    if ! alive "$pid"; then
      log "$(basename "$file" .launched) of $(basename "$(dirname "$file")") exited"
      return 1
    fi
  done
}

sshd_answers() { # sshd_answers NETNS ADDR: an SSH banner comes back
  nsenter --net="/run/netns/$1" timeout 2 bash -c \
    'exec 3<>"/dev/tcp/$0/22" && head -c 4 <&3 | grep -q SSH-' "$2"
}

nodes_idle() {
  local out
  out=$(nsenter --net=/run/netns/login env SLURM_CONF="$STATE/etc/slurm/slurm.conf" \
    timeout 5 sinfo -h -N -o '%N %T' | sort)
  [ "$out" = $'c1 idle\nc2 idle' ]
}

show_logs() {
  local f
  for f in "$STATE"/nodes/*/init.log "$STATE"/nodes/*/*.out "$STATE"/nodes/*/sshd.log \
    "$STATE"/slurm/*.log "$STATE"/munge/munged.log; do
    if [ -s "$f" ]; then
      log "--- $f"
      tail -n 15 "$f" >&2
    fi
  done
}

up_failed() {
  trap - EXIT
  log "up failed (exit status $1)"
  show_logs
  down || true
  exit 1
}

up() {
  local start node
  check_prerequisites
  down || true
  start=$(now)
  # any failure below exits (set -e): show the logs and take down whatever came up
  trap 'up_failed $?' EXIT
  install -d -m 755 /run/sshd # sshd's privilege-separation dir (as setup-system.sh makes it)
  write_files
  if [ ! -e /run/netns ]; then
    touch "$STATE/created-run-netns"
  fi
  make_network
  start_munged
  start_node login login
  for node in "${COMPUTE[@]}"; do
    start_node "$node" compute
  done
  for node in "${NODES[@]}"; do
    wait_for 100 0.05 "$node to start" test -e "$STATE/nodes/$node/started"
  done
  wait_for 100 0.1 "sshd on login ($LOGIN_EXTERNAL)" sshd_answers login "$LOGIN_EXTERNAL"
  for node in "${COMPUTE[@]}"; do
    wait_for 100 0.1 "sshd on $node" sshd_answers login "${NODE_ADDR[$node]}"
  done
  local i
  for ((i = 0; ; i++)); do # bounded: 150 x 0.1 s plus sinfo's own time
    daemons_alive
    if nodes_idle; then
      break
    fi
    if ((i >= 150)); then
      log "timed out waiting for c1 and c2 idle in sinfo"
      return 1
    fi
    sleep 0.1
  done
  # slurmctld leaves jobs pending until its first scheduling pass, ~3 s after it starts (it logs
  # its SchedulerParameters then): wait for it, so the first job starts as promptly as later ones.
  if ! wait_for 50 0.1 "slurmctld's first scheduling pass" \
    grep -q '] SchedulerParameters=' "$STATE/slurm/slurmctld.log"; then
    log "warning: the first job may wait a few seconds"
  fi
  trap - EXIT
  log "up in $(since "$start") s: login $LOGIN_EXTERNAL (from here), c1 ${NODE_ADDR[c1]}, c2 ${NODE_ADDR[c2]} (via login)"
  log "ssh: ssh -F $STATE/laptop/ssh_config login   (or c1, c2 while a job of $TEST_USER runs there)"
  log "in a node as root: nsenter -t \$(cat $STATE/nodes/NODE/init.pid) -n -m -u"
  echo "$STATE/laptop/jlabgw.toml"
}

# One `up` or `down` at a time: a lock on this script itself (no lock file to leave behind).
# The daemons must not inherit fd 9 (they would hold the lock): they are started with 9<&-.
lock() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  exec 9<"${BASH_SOURCE[0]}"
  flock -w 60 9 || die "another topology.sh up/down is still running"
}

case "${1:-}" in
  up)
    lock
    up
    ;;
  down)
    lock
    down
    ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
