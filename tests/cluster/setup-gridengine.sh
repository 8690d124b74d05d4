#!/usr/bin/env bash
# One-time, root-only installation of Debian 12's Son of Grid Engine 8.1.9 for the Grid Engine
# integration tests. Idempotent; run after `apt-get update` (and tests/cluster/setup-system.sh,
# which makes the test user and the job's Python). It starts no daemon: tests/gridengine.py
# brings up its own qmaster + execd, with its own SGE_ROOT, cell, spool and ports, and stops them.
#
# - debconf is preseeded, so the packages install without prompts;
# - --no-install-recommends: bsd-mailx (a gridengine-common dependency) would otherwise pull an
#   MTA;
# - the packages' postinst scripts would start /etc/init.d/gridengine-{master,exec} (which do
#   not find their own pid files and can start a second qmaster): a temporary policy-rc.d
#   refuses every service start during the installation.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "setup-gridengine.sh must run as root" >&2
  exit 1
fi

PACKAGES=(gridengine-master gridengine-exec gridengine-client gridengine-common)

installed() {
  dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep -c '^install ok installed$'
}

if [ "$(installed)" = "${#PACKAGES[@]}" ] && [ -x /usr/lib/gridengine/sge_qmaster ]; then
  echo "gridengine already installed"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
debconf-set-selections <<SEL
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string $(hostname)
gridengine-master shared/gridengineconfig boolean true
gridengine-master shared/gridenginecell string default
gridengine-master shared/gridenginemaster string $(hostname)
gridengine-exec shared/gridengineconfig boolean true
gridengine-exec shared/gridenginecell string default
gridengine-exec shared/gridenginemaster string $(hostname)
gridengine-client shared/gridengineconfig boolean true
gridengine-client shared/gridenginecell string default
gridengine-client shared/gridenginemaster string $(hostname)
SEL

POLICY=/usr/sbin/policy-rc.d
ours=""
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# setup-gridengine.sh: no service starts while gridengine installs\nexit 101\n' \
    >"$POLICY"
  chmod 755 "$POLICY"
  ours=1
fi
remove_policy() { if [ -n "$ours" ]; then rm -f "$POLICY"; fi; }
trap remove_policy EXIT

apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null

if [ "$(installed)" != "${#PACKAGES[@]}" ]; then
  echo "gridengine packages did not install" >&2
  exit 1
fi
if pgrep -x sge_qmaster >/dev/null || pgrep -x sge_execd >/dev/null; then
  echo "warning: a Grid Engine daemon is running (started by someone else?)" >&2
fi
echo "gridengine $(dpkg-query -W -f='${Version}' gridengine-master) installed"
