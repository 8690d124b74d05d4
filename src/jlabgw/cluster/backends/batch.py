"""The batch backends (``slurm``, ``gridengine``): Kernel Gateway in a batch job, reached
through an SSH tunnel. Each backend is this class with its scheduler
(:class:`~jlabgw.cluster.scheduler.Scheduler`); everything here is shared.

1. On the login node (over SSH when ``JLABGW_SSH_HOST`` is set, else here): reuse this user's
   running job of this name recorded in the state file, or render the batch script, write it
   to the connection dir and submit it (``sbatch``, ``qsub``).
2. Wait for RUNNING, reporting the pending reason as progress; a reason the job cannot get
   past (PartitionConfig, InvalidAccount ...) cancels it at once with an explanation, and
   ``JLABGW_QUEUE_TIMEOUT`` gives up with the last reason.
3. Read the 0600 connection file the job writes once its gateway answers.
4. SSH to the compute node (through the login node when there is one) and forward a local
   port to the gateway on the node's 127.0.0.1.

Steps 1-3 are :class:`~jlabgw.cluster.job.BatchJob`, step 4
:class:`~jlabgw.cluster.ssh.tunnel.NodeTunnel`; this module runs them in order, times them,
and answers the :class:`Backend` questions. On close the job is cancelled unless
``JLABGW_KEEP_JOB`` is set or another server of the user still holds it (leases).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import ClassVar

from jlabgw.cluster.backends.base import Backend
from jlabgw.cluster.backends.status import BackendStatus, GatewayStatus, JobInfo
from jlabgw.cluster.connection_file import GatewayInfo
from jlabgw.cluster.files import Node, SSHNode
from jlabgw.cluster.host import Host
from jlabgw.cluster.job import BatchJob, cluster_key
from jlabgw.cluster.leases import describe_holders
from jlabgw.cluster.scheduler import Scheduler
from jlabgw.cluster.ssh.tunnel import NodeTunnel, node_connector
from jlabgw.config import Settings
from jlabgw.errors import BackendError, JlabgwError
from jlabgw.fsutil import ensure_private_dir, write_private_file
from jlabgw.jupyter.endpoint import GatewayEndpoint
from jlabgw.log import register_secret
from jlabgw.progress import Progress

__all__ = ["BatchBackend"]

log = logging.getLogger(__name__)

# seconds between status queries for the walltime notice (and how old a status it accepts):
# once a minute while the job runs, as BatchJob's RUNNING_POLL
_NOTICE_REFRESH = 60.0


# A job in these states still holds its kernels and comes back (SLURM's scontrol suspend,
# Grid Engine's s/S/T); COMPLETING and the rest are on their way out.
_PAUSED = frozenset({"SUSPENDED", "STOPPED"})


class _Laps:
    """Seconds per start-up step, for status and benchmarks."""

    def __init__(self, done: dict[str, float] | None = None) -> None:
        self.timings: dict[str, float] = dict(done or {})
        self._clock = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(now - self._clock, 3)
        self._clock = now

    def total(self) -> dict[str, float]:
        self.timings["total"] = round(sum(self.timings.values()), 3)
        return self.timings


class BatchBackend(Backend):
    """A gateway in a batch job of :meth:`scheduler`'s kind."""

    supports_resources: ClassVar[bool] = True

    @staticmethod
    @abc.abstractmethod
    def scheduler(host: Host) -> Scheduler:
        """The scheduler whose commands run on ``host``."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings
        self._lock = asyncio.Lock()
        self._job: BatchJob | None = None  # made on first use: the login node connection
        self._tunnel = NodeTunnel(node_connector(settings))
        self._gateway: GatewayInfo | None = None  # what the job published for our tunnel
        self._endpoint: GatewayEndpoint | None = None
        self._timings: dict[str, float] = {}
        self._status_at = 0.0  # when notices() last asked squeue (monotonic)
        self._early: threading.Thread | None = None  # begin()'s submission, until start() joins
        self._early_timings: dict[str, float] = {}
        self._early_error: BaseException | None = None
        self._kept_for: str | None = None  # why the job is left running at exit (keep_for)
        self._cert_file: Path | None = None  # the gateway's certificate, kept for `tunnel`

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> GatewayEndpoint:
        async with self._lock:
            job = self._job
            if self._endpoint is not None and job is not None:
                status = await asyncio.to_thread(job.refresh)
                if status.running:
                    return self._endpoint
                if status.state in _PAUSED:  # suspended: its kernels are still there
                    raise BackendError(
                        f"batch job {job.job_id} is {status.state} "
                        f"({status.reason or 'no reason given'}); its kernels wait with it. "
                        "Try again once it runs (jlabgw status shows its state)"
                    )
                log.warning("batch job %s is gone; starting a new one", job.job_id)
                state = job.status.state if job.status else "gone"
                self._retire(f"batch job {job.job_id} is no longer running ({state})")
            await asyncio.to_thread(self._drop_tunnel)
            self._endpoint = await self._bring_up(self.report)
            self.generation += 1
            return self._endpoint

    def begin(self) -> None:
        if self._early is not None or self._endpoint is not None:
            return
        self._early = threading.Thread(target=self._submit_early, name="jlabgw-submit", daemon=True)
        self._early.start()

    def _submit_early(self) -> None:
        try:
            laps = _Laps()
            job = self._connect()
            laps.lap("connect")
            job.reuse_or_submit()
            laps.lap("submit")
            self._early_timings = laps.timings
        except BaseException as exc:  # re-raised by start(), in the caller's context
            self._early_error = exc

    def _connect(self) -> BatchJob:
        if self._job is None:
            self._job = BatchJob.on_login_node(self._settings, self.scheduler, self.name)
        return self._job

    async def _bring_up(self, report: Progress) -> GatewayEndpoint:
        early, self._early = self._early, None
        if early is not None:  # begin() connected and submitted (or failed) already
            await report(0, None, "waiting for the batch job submitted at start-up")
            await asyncio.to_thread(early.join)
            error, self._early_error = self._early_error, None
            if error is not None:
                raise error
            laps = _Laps(self._early_timings)
            assert self._job is not None
            job = self._job
        else:
            laps = _Laps()
            await report(0, None, f"contacting the scheduler on {self._where}")
            job = await asyncio.to_thread(self._connect)
            laps.lap("connect")
            await asyncio.to_thread(job.reuse_or_submit)
            laps.lap("submit")
        status = await job.wait_running(report)
        laps.lap("queue_wait")
        # SSH to the node (~0.2 s) while its gateway starts: squeue names it once it runs.
        if status.node:
            self._tunnel.connect_ahead(status.node)
        try:
            info = await job.wait_gateway(report)
        except BaseException:
            self._tunnel.abandon_ahead()
            raise
        laps.lap("gateway_start")
        register_secret(info.token)
        if not info.cert:
            log.warning(
                "the gateway of job %s speaks plain HTTP (no openssl on the node, or "
                "JLABGW_GATEWAY_TLS=0): its port is not authenticated; see the job log",
                job.job_id,
            )
        self._gateway = info
        self._cert_file = self._keep_cert(info)
        await report(0, None, f"opening an SSH tunnel to {info.host}")
        endpoint = await self._tunnel.open(info.host, info.port, info.token, info.cert or None)
        laps.lap("tunnel")
        self._timings = laps.total()
        log.info("gateway of job %s up: %s", job.job_id, self._timings)
        return endpoint

    def _keep_cert(self, info: GatewayInfo) -> Path | None:
        """The gateway's certificate in the state dir, for `jlabgw tunnel`'s curl --cacert
        (public: no secret in it)."""
        if not info.cert:
            return None
        path = self._settings.state_dir / f"gateway-{self.name}-{info.job_id or 'job'}.pem"
        try:
            ensure_private_dir(path.parent)
            write_private_file(path, info.cert.encode())
        except OSError as exc:
            log.info("cannot keep the gateway certificate in %s: %s", path, exc)
            return None
        return path

    @property
    def _where(self) -> str:
        return self._job.where if self._job else "the login node"

    def _drop_tunnel(self) -> None:
        self._tunnel.close()
        self._endpoint = None

    def registry_name(self) -> str | None:
        return f"{cluster_key(self._settings, self.name)}.json"

    def keeps_kernels(self) -> bool:
        return self._settings.keep_job

    def identity(self) -> str | None:
        job_id = self._job.job_id if self._job else None
        return f"{self.name}:{job_id}" if job_id else None  # submitted or reused: ours

    async def notices(self) -> list[str]:
        warn = self._settings.walltime_warn * 60
        job = self._job
        if not warn or job is None or job.job_id is None or self._endpoint is None:
            return []
        now = job.clock()
        if now - self._status_at > _NOTICE_REFRESH:
            self._status_at = now
            try:
                # a status seen within the minute serves: another check's, or the query that
                # covered this server's other jobs on the same login node
                await asyncio.to_thread(job.refresh, _NOTICE_REFRESH)
            except JlabgwError as exc:  # a notice must never fail a tool call
                log.info("cannot refresh the job's time left: %s", exc)
        notice = job.walltime_notice(warn)
        return [notice] if notice else []

    async def lost(self) -> str | None:
        job = self._job
        if job is None or job.job_id is None:
            return None
        job_id = job.job_id
        status = await asyncio.to_thread(job.refresh)
        if status.running:
            key = self._gateway.key if self._gateway else None
            replaced = await asyncio.to_thread(job.gateway_replaced, key)
            if replaced is None:
                return None  # same gateway: the tunnel only dropped, reconnecting is right
            if replaced:
                await asyncio.to_thread(self._drop_tunnel)  # the next start reuses the job
                return replaced
            # the job ended while we looked
        elif status.state in _PAUSED:  # suspended (Grid Engine's s/S/T): it comes back
            log.info("batch job %s is %s, not gone: waiting for it", job_id, status.state)
            return None
        await asyncio.to_thread(self._drop_tunnel)  # the next start submits a new job
        job.forget()
        state = job.status.state if job.status else status.state
        return f"batch job {job_id} is no longer running ({state})"

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close_now)

    def close_now(self) -> None:
        early = self._early
        if early is not None:  # a submission under way must finish, or its job is orphaned
            early.join(timeout=2 * self._settings.ssh_timeout + 30)
        self._drop_tunnel()
        job, self._job = self._job, None
        if job is None:
            return
        job_id = job.job_id
        if job_id:
            keep = self._settings.keep_job or self._kept_for is not None
            others = job.leave(cancel=not keep)
            if others:
                log.info(
                    "batch job %s keeps running: other jlabgw servers use it (%s)",
                    job_id,
                    describe_holders(others),
                )
            elif self._kept_for:
                log.warning(
                    "leaving batch job %s running: %s. If no server takes them back, "
                    "JLABGW_KERNEL_IDLE_TIMEOUT then JLABGW_JOB_IDLE_TIMEOUT end it",
                    job_id,
                    self._kept_for,
                )
            elif not keep:
                log.info("cancelled batch job %s (no other jlabgw server uses it)", job_id)
        job.close()

    @staticmethod
    def _sharers(job: BatchJob | None) -> list[int]:
        """The pids of the other live servers of this user that hold our job."""
        if job is None or job.job_id is None:
            return []
        try:
            holders = job.sharers()
        except OSError:
            return []
        return [
            int(p) for h in holders if (p := str(h.get("process", "")).partition(":")[0]).isdigit()
        ]

    def keep_for(self, why: str) -> None:
        self._kept_for = why

    # -- status ------------------------------------------------------------------------------

    def describe(self) -> BackendStatus:
        job = self._job
        status = job.status if job else None
        job_id = job.job_id if job else None
        up = self._endpoint is not None
        return BackendStatus(
            self.name,
            GatewayStatus(
                state="running" if up else ("starting" if self._lock.locked() else "stopped"),
                url=self._endpoint.url if self._endpoint else None,
                token_file=job.files.connection_file(job_id) if up and job and job_id else None,
                token_host=self._where if up else None,
                cert_file=str(self._cert_file) if up and self._cert_file else None,
                start_seconds=self._timings or None,
            ),
            JobInfo(
                id=job_id,
                state=status.state if status else None,
                reason=status.reason if status else None,
                node=(self._gateway.host if self._gateway else None)
                or (status.node if status else None),
                time_left=status.time_left if status else None,
                seconds_left=status.seconds_left if status else None,
                where=self._where,
                shared_with=self._sharers(job),
            ),
        )

    # -- the node without a kernel (upload_file, download_file, check_resources) -------------

    def node(self) -> Node | None:
        conn = self._tunnel.connection
        if conn is None or self._endpoint is None:
            return None
        return SSHNode(
            conn,
            remote_setup=self._settings.remote_setup,
            transfer_root=self._settings.transfer_root,
        )
