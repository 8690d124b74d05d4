"""The connection file a gateway's supervisor publishes, and where a batch job's files are.

``node/job_supervisor.py`` writes the file (atomically, mode 0600) once its gateway answers an
authenticated request: host, port, token, pids, when it started and how many times it was
restarted. The local backend and the batch backends read it here, and only here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jlabgw.errors import BackendError

if TYPE_CHECKING:  # the local backend reads connection files too, and needs no paramiko
    from jlabgw.cluster.host import FileStat, Host

__all__ = ["GatewayInfo", "JobFiles", "check_private", "read_connection_file"]


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
    cert: str = field(default="", repr=False)  # the gateway's TLS certificate (PEM), pinned

    @property
    def scheme(self) -> str:
        """``https`` when the gateway has a certificate to pin, else ``http``."""
        return "https" if self.cert else "http"

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
                cert=str(info.get("cert") or ""),
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
    half-written one is never seen); :class:`BackendError` for one that is not private to us
    (another owner, or readable by others: planted, or its token exposed); the host's own
    errors (SSH, OS) pass through."""
    try:
        data = host.read_bytes(path)
    except FileNotFoundError:
        return None
    info = host.stat(path)
    if info is None:  # replaced by the supervisor meanwhile: the next poll reads the new one
        return None
    check_private(host, path, info, "connection file", 0o600)
    return GatewayInfo.parse(data)


def check_private(host: Host, path: str, info: FileStat, what: str, mode: int) -> None:
    """Refuse ``path`` unless we own it and nobody else has any access to it.

    A connection file or directory owned by another user was planted (it would send our token,
    and every cell, to their listener); one others can read leaks the token."""
    mine = host.uid()
    if info.uid is not None and info.uid != mine:
        raise BackendError(
            f"the {what} {path} on {host.where} belongs to uid {info.uid}, not to you (uid "
            f"{mine}): it was not made by your job, so jlabgw will not use it. Remove it, or "
            "set JLABGW_CONNECTION_DIR to a directory only you own"
        )
    if info.mode & 0o077:
        raise BackendError(
            f"the {what} {path} on {host.where} has mode {info.mode:o}: other users can reach "
            f"it, so jlabgw will not use it. Run `chmod {mode:o} {path}` there (and check who "
            "could have read it)"
        )


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
