"""Typed status of a server, its sessions and jobs; JSON only at the edges (the MCP ``status``
and ``list_sessions`` tools, the state file ``jlabgw status`` reads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from jlabgw.cluster.backends.status import BackendStatus, JobInfo

__all__ = ["LaneStatus", "ServerStatus", "SessionStatus"]


@dataclass(frozen=True)
class SessionStatus:
    session_id: str
    experiment_name: str
    kernel_id: str
    kernel_name: str
    notebook_path: str
    cells: int
    executions: int
    state: str  # "idle" | "busy"
    created_at: float
    start_seconds: dict[str, float] = field(default_factory=dict)
    notebook_write_error: str | None = None
    resources: str = "default"
    cluster: str = "default"  # the config file's profile it runs on (default: the server's)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionStatus:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class LaneStatus:
    """A batch job of one resource shape and how many sessions use it."""

    resources: str  # "default" or the shape's key
    job: JobInfo | None
    sessions: int

    def to_dict(self) -> dict[str, Any]:
        job = self.job.to_dict() if self.job else {}
        return {"resources": self.resources, **job, "sessions": self.sessions}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LaneStatus:
        return cls(
            resources=str(data.get("resources", "default")),
            job=JobInfo.from_dict(data),
            sessions=int(data.get("sessions", 0)),
        )


@dataclass(frozen=True)
class ServerStatus:
    server_pid: int
    backend: BackendStatus
    notebook_dir: str
    spare_kernel: str | None  # None (disabled) | "starting" | "ready" | "failed"
    sessions: list[SessionStatus]
    jobs: list[LaneStatus]

    def to_dict(self) -> dict[str, Any]:
        return {
            "server_pid": self.server_pid,
            **self.backend.to_dict(),
            "notebook_dir": self.notebook_dir,
            "spare_kernel": self.spare_kernel,
            "sessions": [s.to_dict() for s in self.sessions],
            "jobs": [j.to_dict() for j in self.jobs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerStatus:
        return cls(
            server_pid=int(data.get("server_pid", data.get("pid", 0))),
            backend=BackendStatus.from_dict(data),
            notebook_dir=str(data.get("notebook_dir", "")),
            spare_kernel=data.get("spare_kernel"),
            sessions=[SessionStatus.from_dict(s) for s in data.get("sessions") or []],
            jobs=[LaneStatus.from_dict(j) for j in data.get("jobs") or []],
        )
