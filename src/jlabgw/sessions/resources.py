"""``check_resources``: what the node a session (or the default job) runs on has, and its
job's time left.

On the local backend the node is this machine: :func:`~.node_probe.probe` is called here
(no kernel), on the disk of the session kernel's working directory (read from ``/proc``).
On a cluster the probe's source runs on the job's node as a command over the SSH connection
the backend holds to it (:meth:`~jlabgw.cluster.backends.base.Backend.node`: the job's Python
after the site set-up, no kernel); only if that fails does it run in a throwaway kernel on
the job (a scratch run: recorded nowhere, the kernel shut down after). The job's id and time
left come from the backend's status, fresh after the gateway check that precedes the probe.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from pathlib import Path
from typing import Any

from jlabgw.cluster.files import is_kernel_id
from jlabgw.errors import JlabgwError, KernelError
from jlabgw.progress import Progress
from jlabgw.sessions import node_probe
from jlabgw.sessions.lanes import Lanes
from jlabgw.sessions.scratch import Scratch
from jlabgw.sessions.session import Session

__all__ = ["Resources", "kernel_cwd"]

log = logging.getLogger(__name__)

_PROBE_WAIT = 60.0  # seconds a probe in a kernel may take (its nvidia-smi call: 10)
_MARK = "JLABGW-RESOURCES:"
IN_KERNEL = "a throwaway kernel on the job's node, shut down after"


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
            await self._lanes.gateway(progress, lane)  # up, and the job's status fresh
            kernel_id = session.kernel_id if session is not None else ""
            code = probe_code(kernel_id)
            found, why = await self._on_node(lane, code)
            if found is None:
                found = await self._in_kernel(progress, lane, code)
                found["asked"] = IN_KERNEL
                if why:
                    found["asked_directly_failed"] = why
            info = found
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

    async def _on_node(self, lane: str, code: str) -> tuple[dict[str, Any] | None, str]:
        """The probe's answer from a command on the lane's node (no kernel), or None and
        why not (empty: the backend has no way to the node but a kernel)."""
        node = self._lanes.backend(lane).node()
        if node is None:
            return None, ""
        try:
            out = await asyncio.to_thread(node.run_python, code, _PROBE_WAIT)
            found = parse_probe(out)
        except (JlabgwError, ValueError) as exc:
            log.info("the probe over SSH on %s failed (%s); asking a kernel", node.where, exc)
            return None, f"{type(exc).__name__}: {str(exc)[:300]}"
        if found is None:
            why = f"the probe printed no answer on {node.where}: {out.strip()[-300:]!r}"
            log.info("%s; asking a kernel", why)
            return None, why
        found["asked"] = f"the job's node ({node.where}) over SSH, no kernel"
        return found, ""

    async def _in_kernel(self, progress: Progress, lane: str, code: str) -> dict[str, Any]:
        result = await self._scratch.throwaway(
            code, progress, wait=_PROBE_WAIT, cell_timeout=_PROBE_WAIT, lane=lane
        )
        for output in result.outputs:
            found = parse_probe(str(output.get("text", "")))
            if found is not None:
                return found
        raise KernelError(
            f"the resource probe did not answer on the node (status {result.status}); "
            "execute_scratch runs your own check there"
        )


def probe_code(kernel_id: str = "") -> str:
    """:mod:`.node_probe`'s source and a line that prints its answer (on the disk where the
    kernel ``kernel_id`` works, when it is found). The id goes in reversed: as is, it would be
    in this program's own command line, which :func:`~.node_probe.kernel_cwd` then finds."""
    hidden = kernel_id[::-1] if is_kernel_id(kernel_id) else ""
    return (
        inspect.getsource(node_probe)
        + "\nimport json as _json\n"
        + f"_cwd = kernel_cwd({hidden!r}[::-1]) if {hidden!r} else None\n"
        + f"print({_MARK!r} + _json.dumps(probe(_cwd)))\n"
    )


def parse_probe(text: str) -> dict[str, Any] | None:
    """The probe's answer in its printed output, if there (ValueError: not JSON)."""
    for line in text.splitlines():
        if line.startswith(_MARK):
            found = json.loads(line[len(_MARK) :])
            if not isinstance(found, dict):
                raise ValueError(f"the probe printed {type(found).__name__}, not an object")
            return found
    return None


def kernel_cwd(kernel_id: str) -> str | None:
    """The working directory of the local kernel process ``kernel_id``, if found."""
    return node_probe.kernel_cwd(kernel_id)
