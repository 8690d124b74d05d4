#!/bin/sh
# AuthorizedKeysCommand of the compute nodes' sshd: emulates pam_slurm_adopt, i.e. a user may
# log in to a compute node only while they have a running job on it. Prints the user's keys
# (from the site-managed keys dir) only if squeue lists a RUNNING job of theirs on this node.
# sshd runs it as AuthorizedKeysCommandUser (nobody) as `/bin/sh adopt.sh %u KEYS_DIR` inside
# the node's namespaces, where /etc/slurm and the hostname are the node's own.
user=$1
keys_dir=$2
case $user in
  '' | *[!A-Za-z0-9._-]*) exit 1 ;;
esac
keys="$keys_dir/$user"
[ -r "$keys" ] || exit 0
node=$(/bin/hostname)
jobs=$(/usr/bin/timeout 10 /usr/bin/squeue -h -w "$node" -u "$user" -t R -o %i 2>/dev/null) || exit 0
if [ -n "$jobs" ]; then
  exec /bin/cat "$keys"
fi
echo "adopt: $user has no running job on $node" >&2
exit 0
