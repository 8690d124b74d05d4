"""A server killed (SIGKILL) while it writes a notebook leaves a valid notebook, every time.

One helper process imports jlabgw once, then forks a writer per trial: the writer appends
cells and grows a stream output about every millisecond (the writer thread persisting them),
and the helper kills it after a random delay and validates the file. Forking keeps 200 trials
fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TRIALS = 200

HELPER = r"""
import json, os, random, signal, sys, time
from pathlib import Path
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_output
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.writer import NotebookWriter

root = Path(sys.argv[1])
trials = int(sys.argv[2])
random.seed(1234)
results = []
for trial in range(trials):
    pid = os.fork()
    if pid == 0:  # the "server": write as fast as possible until killed
        writer = NotebookWriter(delay=0.0)
        doc = NotebookDoc.create(root, f"t{trial}", writer)
        i = 0
        while True:
            cell = new_code_cell(f"print({i})", outputs=[])
            doc.append_cell(cell)
            with doc.editing(cell):
                cell.outputs.append(new_output("stream", name="stdout", text="x" * 5000))
            with doc.editing(cell):
                cell.outputs[0]["text"] += "y\n" * 100
                cell.execution_count = i + 1
            doc.append_cell(new_markdown_cell(f"note {i}"))
            i += 1
            time.sleep(0.001)  # messages come with gaps: the writer thread gets its turns
    time.sleep(random.uniform(0.05, 0.4))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    path = root / f"t{trial}.ipynb"
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(f".t{trial}.ipynb")]
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        results.append({"valid": True, "cells": len(nb.cells), "temp_files": leftovers})
    except Exception as exc:
        results.append({"valid": False, "error": repr(exc)[:300], "temp_files": leftovers})
print(json.dumps(results))
"""


def test_sigkill_during_writes_always_leaves_a_valid_notebook(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELPER, str(tmp_path), str(TRIALS)],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    results = json.loads(done.stdout)
    assert len(results) == TRIALS
    invalid = [r for r in results if not r["valid"]]
    assert invalid == []
    # not vacuous: in most trials the kill landed after the writes had begun
    written = [r["cells"] for r in results]
    assert sum(n > 0 for n in written) > TRIALS // 2, written
