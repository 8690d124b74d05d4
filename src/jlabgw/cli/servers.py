"""``jlabgw status`` and ``jlabgw stop``: the running servers, from their state files
(:mod:`jlabgw.sessions.state`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

from jlabgw.config import Settings
from jlabgw.errors import UsageError
from jlabgw.sessions.state import ServerState, pid_alive, read_server_states

__all__ = ["status", "stop"]

_STOP_WAIT = 15.0


def status(settings: Settings, as_json: bool) -> int:
    states = read_server_states(settings.state_dir)
    if as_json:
        print(json.dumps([state.to_dict() for state in states], indent=1))
        return 0
    if not states:
        print(f"no jlabgw server running (state dir {settings.state_dir})")
        return 0
    for state in states:
        _print_state(state)
    return 0


def _print_state(state: ServerState) -> None:
    status = state.status
    gw = status.backend.gateway
    if state.stale:
        print(
            f"server pid {state.pid}: gone, but its gateway pid "
            f"{state.orphan_gateway_pid} is still running (`jlabgw stop` ends it)"
        )
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.started_at))
    print(f"server pid {state.pid} (since {started}), backend {status.backend.backend}")
    print(f"  gateway: {gw.state} {gw.url or ''} pid {gw.pid}")
    job = status.backend.job
    if job and job.id:
        print(
            f"  job: {job.id} {job.state or '?'} on {job.node or '?'}, "
            f"time left {job.time_left or '?'}"
            + (f" (reason: {job.reason})" if job.reason else "")
            + f" [{job.where}]"
        )
        if job.shared_with:
            pids = ", ".join(str(pid) for pid in job.shared_with)
            print(f"  job shared with server pid {pids}: it ends when the last of them exits")
    for extra in status.jobs[1:]:  # jobs of other resource shapes
        print(
            f"  job: {(extra.job.id if extra.job else None) or '-'} "
            f"{(extra.job.state if extra.job else None) or '?'} on "
            f"{(extra.job.node if extra.job else None) or '?'} for {extra.resources}, "
            f"{extra.sessions} session(s)"
        )
    print(f"  notebooks: {status.notebook_dir}")
    print(f"  sessions: {len(status.sessions)}")
    for s in status.sessions:
        where = f"  [{s.cluster}]" if s.cluster != "default" else ""
        print(f"    {s.session_id}  {s.state:<5}  {s.cells:>4} cells  {s.notebook_path}{where}")


def stop(settings: Settings, only_pid: int | None, every: bool = False) -> int:
    """Stop the one server running (plus orphaned gateways), the one ``only_pid`` names, or
    with ``every`` all of them. Several running and none named: refused, naming them (one
    may be another MCP client's, with hours of kernel state)."""
    states = read_server_states(settings.state_dir)
    if only_pid is not None:
        states = [s for s in states if s.pid == only_pid]
        if not states:
            raise UsageError(f"no jlabgw server with pid {only_pid} (see `jlabgw status`)")
    if not states:
        print("no jlabgw server running")
        return 0
    live = [s for s in states if not s.stale]
    if only_pid is None and not every and len(live) > 1:
        listed = "; ".join(
            f"pid {s.pid}: {len(s.status.sessions)} session(s), notebooks {s.status.notebook_dir}"
            for s in live
        )
        raise UsageError(
            f"{len(live)} jlabgw servers are running ({listed}). Stop one with "
            "`jlabgw stop --pid PID`, or all of them with `jlabgw stop --all`"
        )
    failed = 0
    for state in states:
        pid = state.orphan_gateway_pid if state.orphan_gateway_pid else state.pid
        what = "orphaned gateway" if state.stale else "server"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_WAIT
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            print(f"{what} pid {pid} did not stop within {_STOP_WAIT:.0f} s", file=sys.stderr)
            failed += 1
        else:
            print(f"stopped {what} pid {pid}")
            if state.stale:
                state.state_file.unlink(missing_ok=True)
    return 1 if failed else 0
