"""Sessions whose server died: they wait on the job for the next server, so the job stays.

A server that is SIGKILLed (or crashes) cannot hand its sessions over; their records stay in
the registry with an owner that is gone, and the next server takes them back (issue 6). If
another server of the same user is the last to leave the job meanwhile, cancelling it would
throw those kernels away: it leaves the job running instead, and the job's own idle timeout
(kernels culled after JLABGW_KERNEL_IDLE_TIMEOUT, the job ended JLABGW_JOB_IDLE_TIMEOUT after
its last kernel) ends it if nobody comes back.
"""

from __future__ import annotations

from jlabgw.cluster.backends.base import Backend
from jlabgw.processes import describe_owner
from jlabgw.sessions.registry import SessionRegistry

__all__ = ["keep_job_for_orphans"]


def keep_job_for_orphans(registry: SessionRegistry, backend: Backend) -> None:
    """Tell ``backend`` to leave its job running at exit if the registry holds sessions on it
    that a dead server left. Blocking (reads the registry): call it from a thread."""
    identity = backend.identity()
    if identity is None:
        return
    orphans = [r for r in registry.orphans() if r.get("identity") == identity]
    if orphans:
        owners = ", ".join(sorted({describe_owner(r.get("owner")) for r in orphans}))
        backend.keep_for(
            f"{len(orphans)} session(s) of {owners}, which exited without handing them over, "
            "are on it for the next jlabgw server to take back"
        )
