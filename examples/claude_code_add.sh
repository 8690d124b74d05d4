#!/usr/bin/env bash
# Register jlabgw with Claude Code.
#
# On the cluster's login node (Claude Code running there): the slurm backend with
# JLABGW_SSH_HOST unset runs sbatch/squeue directly and tunnels to the compute node.
# On a laptop: set JLABGW_PROFILE (or JLABGW_SSH_HOST) to reach the cluster over SSH.
#
# --scope local: this project only, kept out of git (use --scope user for every project, or
# copy examples/.mcp.json to the repository root to share it with the team).
set -euo pipefail
claude mcp add --scope local \
    -e JLABGW_NOTEBOOK_DIR="$PWD/notebooks" \
    -e JLABGW_PROFILE="${JLABGW_PROFILE:-cpu}" \
    jlabgw -- jlabgw serve
# Long cells: the server answers within JLABGW_EXEC_WAIT (30 s) and sends progress meanwhile,
# so Claude Code's MCP_TOOL_TIMEOUT need not be raised.
