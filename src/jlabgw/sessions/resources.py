"""``check_resources``: what the node a session (or the default job) runs on has, and its
job's time left.

On the local backend the node is this machine: :func:`~.node_probe.probe` is called here
(no kernel), on the disk of the session kernel's working directory (read from ``/proc``).
On a cluster the probe's source runs in a throwaway kernel on the session's job (a scratch
run: recorded nowhere, the kernel shut down after), since that is where the node is.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from pathlib import Path
from typing import Any

from jlabgw.errors import KernelError
from jlabgw.progress import Progress
from jlabgw.sessions import node_probe
from jlabgw.sessions.lanes import Lanes
from jlabgw.sessions.scratch import Scratch
from jlabgw.sessions.session import Session

__all__ = ["Resources", "kernel_cwd"]

_PROBE_WAIT = 60.0  # seconds a probe in a kernel may take (its nvidia-smi call: 10)
_MARK = "JLABGW-RESOURCES:"


class Resources:
    """Resource checks for :class:`~.manager.SessionManager`."""

    def __init__(self, lanes: Lanes, scratch: Scratch, default_dir: Path) -> None:
        """``default_dir``: whose disk to report on the local backend without a session."""
        self._lanes = lanes
        self._scratch = scratch
        self._default_dir = default_dir

    async def check(
        self, session: Session | None, progress: Progress, *, direct: bool | None = None
    ) -> dict[str, Any]:
        """``session``'s node (None: the default job's). ``direct``: ask this machine (the
        default on the local backend) rather than a throwaway kernel."""
        lane = session.lane if session is not None else ""
        backend = self._lanes.backend(lane)
        if direct is None:
            direct = backend.name == "local"
        if direct:
            workdir = kernel_cwd(session.kernel_id) if session is not None else None
            info = await asyncio.to_thread(node_probe.probe, workdir or str(self._default_dir))
            info["asked"] = "this machine, directly (no kernel)"
        else:
            info = await self._in_kernel(progress, lane)
            info["asked"] = "a throwaway kernel on the job's node, shut down after"
        job = backend.describe().job
        info["backend"] = backend.name
        info["job"] = (
            {
                "id": job.id,
                "state": job.state,
                "node": job.node,
                "time_left": job.time_left,
                "seconds_left": job.seconds_left,
            }
            if job is not None
            else None
        )
        if session is not None:
            info["session_id"] = session.id
        return info

    async def _in_kernel(self, progress: Progress, lane: str) -> dict[str, Any]:
        code = (
            inspect.getsource(node_probe)
            + f"\nimport json as _json\nprint({_MARK!r} + _json.dumps(probe()))\n"
        )
        result = await self._scratch.throwaway(
            code, progress, wait=_PROBE_WAIT, cell_timeout=_PROBE_WAIT, lane=lane
        )
        for output in result.outputs:
            for line in str(output.get("text", "")).splitlines():
                if line.startswith(_MARK):
                    found: dict[str, Any] = json.loads(line[len(_MARK) :])
                    return found
        raise KernelError(
            f"the resource probe did not answer on the node (status {result.status}); "
            "execute_scratch runs your own check there"
        )


def kernel_cwd(kernel_id: str) -> str | None:
    """The working directory of the local kernel process whose command line names
    ``kernel_id`` (its connection file), if it can be found."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if kernel_id.encode() in (entry / "cmdline").read_bytes():
                return os.readlink(entry / "cwd")
        except OSError:
            continue
    return None
