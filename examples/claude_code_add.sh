#!/usr/bin/env bash
# Register jlabgw with Claude Code for this project (writes .claude settings, not .mcp.json).
# Use --scope user to have it in every project. jlabgw must be on PATH (or give its full path).
set -euo pipefail
claude mcp add --scope local -e JLABGW_NOTEBOOK_DIR="$PWD/notebooks" jlabgw -- jlabgw serve
