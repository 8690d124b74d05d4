#!/bin/bash
#$ -N jlabgw
#$ -S /bin/bash
#$ -j y

# Jupyter Kernel Gateway for jlabgw's MCP sessions, as a Grid Engine job. Rendered by jlabgw
# from batch_templates/gridengine.sh: shell values were quoted when they were filled in, and the
# '#$' values (which Grid Engine reads, not bash) hold no space, quote or shell character.
# TMPDIR is Grid Engine's per-job directory, removed when the job ends.
# The gateway token is generated on the node by the supervisor: it is not in this script.
set -eo pipefail
umask 077

# --- site set-up (JLABGW_REMOTE_SETUP): module load, conda or venv activation ---

# --- end of site set-up ---

connection_dir="$HOME"/.jlabgw/connections
mkdir -p -m 700 "$connection_dir"
work_dir="$(mktemp -d "${TMPDIR:-/tmp}/jlabgw-${JOB_ID:-nojob}.XXXXXX")"

cat > "$work_dir/jlabgw_nodelay.py" <<'JLABGW_NODELAY_EOF'
<embedded jlabgw/gateway_ext.py>
JLABGW_NODELAY_EOF
cat > "$work_dir/jlabgw_job_supervisor.py" <<'JLABGW_SUPERVISOR_EOF'
<embedded jlabgw/job_supervisor.py>
JLABGW_SUPERVISOR_EOF

exec "${JLABGW_PYTHON:-python3}" "$work_dir/jlabgw_job_supervisor.py" \
    --connection-file "$connection_dir/jlabgw-${JOB_ID:-nojob}.json" \
    --work-dir "$work_dir" \
    --kernel-idle 3600 \
    --job-idle 1800
