#!/bin/bash
#$ -N jlabgw
#$ -S /bin/bash
#$ -j y
#$ -q gpu.q@node1|long.q
#$ -l h_rt=24:00:00
#$ -pe smp 16
#$ -l h_vmem=4G,gpu=1
#$ -P proj-42
#$ -m n
#$ -l exclusive=true

# Jupyter Kernel Gateway for jlabgw's MCP sessions, as a Grid Engine job. Rendered by jlabgw
# from batch_templates/gridengine.sh: shell values were quoted when they were filled in, and the
# '#$' values (which Grid Engine reads, not bash) hold no space, quote or shell character.
# TMPDIR is Grid Engine's per-job directory, removed when the job ends.
# The gateway token is generated on the node by the supervisor: it is not in this script.
set -eo pipefail
umask 077

# --- site set-up (JLABGW_REMOTE_SETUP): module load, conda or venv activation ---
module load cuda/12
source ~/venvs/jg/bin/activate
# --- end of site set-up ---

connection_dir=/scratch/me/jlabgw
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
    --kernel-idle 600 \
    --job-idle 0
