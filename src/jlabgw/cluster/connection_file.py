"""The connection file a gateway's supervisor publishes, and where a batch job's files are.

``node/job_supervisor.py`` writes the file (atomically, mode 0600) once its gateway answers an
authenticated request: host, port, token, pids, when it started and how many times it was
restarted. The local backend and the batch backends read it here, and only here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the local backend reads connection files too, and needs no paramiko
    from jlabgw.cluster.host import Host

__all__ = ["GatewayInfo", "JobFiles", "read_connection_file"]


@dataclass(frozen=True)
class GatewayInfo:
    """One gateway as its supervisor described it. ``token`` is never shown in reprs."""

    host: str
    port: int
    token: str = field(repr=False)
    job_id: str = ""
    gateway_pid: int | None = None
    started_at: float | None = None
    restarts: int | None = None
    previous_exit: str = ""  # how the gateway before this one ended ("" for the first)

    @property
    def key(self) -> tuple[int, float | None]:
        """Tells this gateway from a replacement the job started after it died."""
        return (self.port, self.started_at)

    @classmethod
    def parse(cls, data: bytes) -> GatewayInfo:
        """The file's content; ValueError if it is not a connection file."""
        info = json.loads(data)
        if not isinstance(info, dict) or not all(k in info for k in ("host", "port", "token")):
            raise ValueError("not a jlabgw connection file (host, port and token expected)")
        try:
            return cls(
                host=str(info["host"]),
                port=int(info["port"]),
                token=str(info["token"]),
                job_id=str(info.get("job_id") or ""),
                gateway_pid=_int_or_none(info.get("gateway_pid")),
                started_at=_float_or_none(info.get("started_at")),
                restarts=_int_or_none(info.get("restarts")),
                previous_exit=str(info.get("previous_exit") or ""),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed jlabgw connection file: {exc}") from exc


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def read_connection_file(host: Host, path: str) -> GatewayInfo | None:
    """The gateway described at ``path`` on ``host``; None while there is no such file.

    ValueError for a file that is not a connection file (they are written atomically, so a
    half-written one is never seen); the host's own errors (SSH, OS) pass through."""
    try:
        data = host.read_bytes(path)
    except FileNotFoundError:
        return None
    return GatewayInfo.parse(data)


@dataclass(frozen=True)
class JobFiles:
    """Where a batch job's files are, in the connection dir on the login node.

    The names match what the batch template writes (``jlabgw-$SLURM_JOB_ID.json``); pass a
    scheduler's placeholder as ``job_id`` for a pattern (``log("%j")`` for sbatch --output)."""

    conn_dir: str

    def connection_file(self, job_id: str) -> str:
        return f"{self.conn_dir}/jlabgw-{job_id}.json"

    def log(self, job_id: str) -> str:
        return f"{self.conn_dir}/jlabgw-{job_id}.log"

    def script(self, job_name: str) -> str:
        return f"{self.conn_dir}/{job_name}.sbatch"
