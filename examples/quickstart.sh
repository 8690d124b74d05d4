#!/usr/bin/env bash
# Try jlabgw without an MCP client: install into a venv, run code, look at the notebook.
set -euo pipefail
python3 -m venv "${VENV:-.venv}"
. "${VENV:-.venv}/bin/activate"
pip install -q jlabgw 2>/dev/null || pip install -q -e "$(dirname "$0")/.."
jlabgw run -c "import platform; print(platform.python_version()); sum(range(10))"
jlabgw run -c "x = [i * i for i in range(5)]; x" --notebook quickstart.ipynb
echo "notebooks:" && ls -l notebooks/
