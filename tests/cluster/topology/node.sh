#!/usr/bin/env bash
# The first process of one node of the test topology (tests/cluster/topology.sh), started as
#   nsenter --net=/run/netns/NODE unshare --mount --uts bash node.sh NODE ROLE STATE
# so it runs in the node's network namespace and in a private mount and UTS namespace of its
# own (not `ip netns exec`: that remounts /sys, and slurmd then dies initialising cgroups).
# It names the node, bind-mounts the cluster's /etc/hosts, /etc/slurm and /etc/ssh (private
# mount namespace: they never reach the host), starts the node's daemons and stays as the
# holder of the namespaces (`nsenter -t $(cat STATE/nodes/NODE/init.pid) -n -m -u` enters them).
set -euo pipefail
node=$1 role=$2 state=$3
dir="$state/nodes/$node"
echo $$ >"$dir/init.pid"

hostname "$node"
mount --bind "$state/etc/hosts" /etc/hosts
mount --bind "$state/etc/slurm" /etc/slurm
mount --bind "$state/etc/ssh" /etc/ssh
ip link set lo up

# `cmd &` forks and execs cmd directly: $! is the daemon's own pid.
case $role in
  login)
    /usr/sbin/slurmctld -D </dev/null >>"$dir/slurmctld.out" 2>&1 &
    echo $! >"$dir/slurmctld.launched"
    ;;
  compute)
    /usr/sbin/slurmd -D -N "$node" </dev/null >>"$dir/slurmd.out" 2>&1 &
    echo $! >"$dir/slurmd.launched"
    ;;
esac
/usr/sbin/sshd -D -e -f "$dir/sshd_config" </dev/null >>"$dir/sshd.log" 2>&1 &
echo $! >"$dir/sshd.launched"
touch "$dir/started"
wait
