"""What a backend reports about its gateway and batch job: typed, turned into JSON only at the
edges (the MCP ``status`` tool and the state file that ``jlabgw status`` reads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BackendStatus", "GatewayStatus", "JobInfo"]


@dataclass(frozen=True)
class GatewayStatus:
    """The gateway as the backend sees it. The token itself never appears here."""

    state: str  # "running" | "starting" | "stopped"
    url: str | None = None
    pid: int | None = None  # a gateway process on this machine (local backend)
    started_at: float | None = None
    start_seconds: float | dict[str, float] | None = None
    log: str | None = None
    token_file: str | None = None  # the 0600 file that holds the token
    token_host: str | None = None  # where token_file is: None for this machine
    cert_file: str | None = None  # the gateway's pinned TLS certificate, on this machine

    def token_location(self) -> str | None:
        """``token_file``, with the host it is on when that is not this machine."""
        if self.token_file is None:
            return None
        return f"{self.token_file} on {self.token_host}" if self.token_host else self.token_file

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["token_file"] = self.token_location()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GatewayStatus:
        fields = {k: data.get(k) for k in cls.__dataclass_fields__ if k != "state"}
        token_file, host = fields.get("token_file"), fields.get("token_host")
        if isinstance(token_file, str) and host and token_file.endswith(f" on {host}"):
            fields["token_file"] = token_file.removesuffix(f" on {host}")
        return cls(str(data.get("state") or "stopped"), **fields)


@dataclass(frozen=True)
class JobInfo:
    """The batch job that runs a gateway."""

    id: str | None
    state: str | None = None
    reason: str | None = None
    node: str | None = None
    time_left: str | None = None
    seconds_left: int | None = None
    where: str | None = None  # the host the scheduler commands run on
    # pids of this user's other live jlabgw servers holding the job (it ends with the last)
    shared_with: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobInfo:
        fields = {k: data.get(k) for k in cls.__dataclass_fields__}
        shared = fields.pop("shared_with", None)
        return cls(
            **fields, shared_with=[int(p) for p in shared] if isinstance(shared, list) else []
        )


@dataclass(frozen=True)
class BackendStatus:
    backend: str
    gateway: GatewayStatus = field(default_factory=lambda: GatewayStatus("stopped"))
    job: JobInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"backend": self.backend, "gateway": self.gateway.to_dict()}
        if self.job is not None:
            data["job"] = self.job.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackendStatus:
        job = data.get("job")
        return cls(
            backend=str(data.get("backend", "?")),
            gateway=GatewayStatus.from_dict(data.get("gateway") or {}),
            job=JobInfo.from_dict(job) if isinstance(job, dict) else None,
        )
