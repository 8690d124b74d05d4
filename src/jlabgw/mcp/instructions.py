"""What the server tells the model at initialize: how sessions, long cells and lost kernels work,
and which tool to reach for. Each tool's own description is its docstring in
:mod:`jlabgw.mcp.server`."""

__all__ = ["INSTRUCTIONS"]

INSTRUCTIONS = """\
jlabgw runs Python (or another Jupyter kernel) in persistent sessions and records every
executed cell, with its outputs, in a .ipynb notebook. Start with start_new_session, then call
execute_code repeatedly: variables persist between calls in the same session. Do not shut
sessions down unless the user asks: their state is valuable.

Which tool:
- new work: start_new_session. An existing notebook: start_notebook (the same file, a fresh
  kernel, nothing re-run; if a session already has it open you get that session),
  start_session_resume_notebook (re-runs it to rebuild its state), or
  start_session_continue_notebook (works on a copy). list_notebooks shows the notebooks and
  who has each open; read_notebook reads any of them (paged, images as a note).
- the notebook's cells: execute_code and add_markdown append, or insert at cell_index;
  edit_cell changes a cell (and re-runs code), run_cell re-runs one unchanged, delete_cell
  and move_cell tidy up. Indexes count from 0 in the notebook as it is on disk now (a person
  may edit it meanwhile); negative ones count from the end. The running cell cannot be
  deleted or moved.
- a quick check that should not be in the notebook (is a package installed, what is in a
  file): execute_scratch, in a throwaway kernel; with session_id it sees and can change that
  session's variables, which the notebook then no longer reproduces.
- before a big computation, or when a batch job may end soon: check_resources (CPUs, memory,
  GPUs, disk, the job's time left).
- files between the notebook directory and where the kernel works: upload_file (data in),
  download_file (results out); relative remote paths are where the kernel's open() looks.

Long cells: execute_code returns after about 30 s with the output so far and an execution_id
while the cell keeps running; call get_execution to receive the rest (it waits for more), and
interrupt_kernel to stop it. A session runs one cell at a time; different sessions run in
parallel. Long outputs are shortened in results (the middle is cut); the notebook keeps all.

Other languages: list_kernelspecs shows the kernels available (R, Julia ...); pass one as
kernel_name to start_new_session. When an error says a session's kernel is gone (the batch job
ended, the kernel was culled or died), it names the notebook: start_session_resume_notebook
with that notebook_path rebuilds the state. Errors say what to do next; follow them rather
than retrying the same call.
"""
