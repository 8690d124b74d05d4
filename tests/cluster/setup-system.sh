#!/usr/bin/env bash
# One-time, root-only set-up of this machine for the SSH (and later SLURM) integration tests:
# Debian packages, the dedicated test user, and sshd's runtime directory. Idempotent.
# The services themselves are started and stopped by the test suite from files here:
# sshd (tests/sshd.py, sshd_config.in: 127.0.0.1, a high port, its own host key) and a
# one-node SLURM (tests/slurm.py, slurm.conf.in: munged, slurmctld, slurmd as root).
set -euo pipefail

TEST_USER="${JLABGW_TEST_USER:-jlabgw-test}"
OTHER_USER="${JLABGW_OTHER_USER:-jlabgw-other}"

if [ "$(id -u)" != 0 ]; then
  echo "setup-system.sh must run as root" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends openssh-server openssh-client procps curl \
  slurm-wlm slurmctld slurmd slurm-client munge python3 python3-venv \
  iproute2 util-linux >/dev/null

# sshd refuses to start without its privilege-separation directory.
install -d -m 755 /run/sshd

# A dedicated user: sshd (sensibly) refuses root logins. useradd leaves the account locked
# ("!" in /etc/shadow), and with UsePAM no sshd then refuses even key logins; '*' unlocks it
# for keys only. Its home is under /home (no world-writable parents: StrictModes).
if ! id "$TEST_USER" >/dev/null 2>&1; then
  useradd --create-home --home-dir "/home/$TEST_USER" --shell /bin/bash "$TEST_USER"
fi
usermod -p '*' "$TEST_USER"
install -d -m 700 -o "$TEST_USER" -g "$TEST_USER" "/home/$TEST_USER/.ssh"
echo "test user $TEST_USER ready"

# A second unprivileged account: another user of a shared compute node, who must see and reach
# nothing of the test user's sessions (tests/integration/test_shared_node.py runs it inside a
# node's namespaces). It never logs in: no key, no shell needed, its own group.
if ! id "$OTHER_USER" >/dev/null 2>&1; then
  useradd --create-home --home-dir "/home/$OTHER_USER" --shell /bin/bash "$OTHER_USER"
fi
echo "other user $OTHER_USER ready"

# The Python that batch jobs of the test user run the gateway with, as a site's module or
# conda env would provide it. Built from Debian's python3: the project's own venv may hang off
# a Python under /root (mode 0700), which a job running as the test user cannot execute.
JOB_VENV="${JLABGW_TEST_JOB_VENV:-/opt/jlabgw-test/job-venv}"
if ! "$JOB_VENV/bin/python" -c 'import kernel_gateway, ipykernel' >/dev/null 2>&1; then
  rm -rf "$JOB_VENV"
  /usr/bin/python3 -m venv "$JOB_VENV"
  "$JOB_VENV/bin/python" -m pip install -q --disable-pip-version-check \
    jupyter-kernel-gateway ipykernel
fi
chmod -R a+rX "$JOB_VENV"
echo "job Python $JOB_VENV ready"
