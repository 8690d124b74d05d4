"""The ``slurm`` backend: Kernel Gateway in a batch job, reached through an SSH tunnel.

1. On the login node (over SSH when ``JLABGW_SSH_HOST`` is set, else here): reuse this user's
   running job of this name recorded in the state file, or render the batch script, write it
   to the connection dir and ``sbatch`` it.
2. Wait for RUNNING, reporting the pending reason as progress; a reason the job cannot get
   past (PartitionConfig, InvalidAccount ...) cancels it at once with an explanation, and
   ``JLABGW_QUEUE_TIMEOUT`` gives up with the last reason.
3. Read the 0600 connection file the job writes once its gateway answers.
4. SSH to the compute node (through the login node when there is one) and forward a local
   port to the gateway on the node's 127.0.0.1.

On close the job is cancelled unless ``JLABGW_KEEP_JOB`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from typing import Any, ClassVar

from jlabgw.cluster.backends.base import Backend
from jlabgw.cluster.backends.status import BackendStatus, GatewayStatus, JobInfo
from jlabgw.cluster.host import Host, expand_home, host_for
from jlabgw.cluster.slurm.batch import render_batch_script
from jlabgw.cluster.slurm.client import JobStatus, SlurmClient, hopeless_reason
from jlabgw.cluster.ssh.connection import SSHConnection
from jlabgw.cluster.ssh.forward import Forwarder
from jlabgw.config import Settings
from jlabgw.errors import BackendError, CommandError, JlabgwError
from jlabgw.fsutil import ensure_private_dir, write_private_file
from jlabgw.jupyter.endpoint import GatewayEndpoint
from jlabgw.log import register_secret
from jlabgw.progress import Progress

__all__ = ["SlurmBackend"]

log = logging.getLogger(__name__)

# squeue while queued: soon after sbatch (an idle node starts the job in ~0.5 s), then less
# and less often. The connection file is a stat over an open SFTP channel: cheap, so it is
# polled every 0.1 s at first (the gateway is up ~1.5 s after the job starts); SLURM is asked
# at most once a second meanwhile whether the job is still alive.
_POLL_START = 0.1
_POLL_MAX = 2.0
_FILE_POLL_MAX = 1.0
_ALIVE_CHECK_EVERY = 1.0
_REPLACE_WAIT = 60.0  # how long a dead gateway's restart in the job may take
_NOTICE_REFRESH = 60.0  # seconds between squeue calls for the walltime notice


class SlurmBackend(Backend):
    name: ClassVar[str] = "slurm"
    supports_resources: ClassVar[bool] = True

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings
        self._lock = asyncio.Lock()
        self._host: Host | None = None
        self._slurm: SlurmClient | None = None
        self._job_id: str | None = None
        self._status: JobStatus | None = None
        self._timings: dict[str, float] = {}  # seconds per start-up step, for status/benchmarks
        self._status_at = 0.0  # when notices() last asked squeue (monotonic)
        self._early: threading.Thread | None = None  # begin()'s submission, until start() joins
        self._early_timings: dict[str, float] = {}
        self._early_error: BaseException | None = None
        self._node: str | None = None
        self._conn_dir: str | None = None
        self._endpoint: GatewayEndpoint | None = None
        self._node_conn: SSHConnection | None = None
        self._forwarder: Forwarder | None = None
        self._gateway_key: tuple[Any, Any] | None = None  # (port, started_at) of our gateway
        self._state_file = settings.state_dir / f"slurm-{settings.job_name}.json"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> GatewayEndpoint:
        async with self._lock:
            if self._endpoint is not None and await asyncio.to_thread(self._still_running):
                return self._endpoint
            if self._endpoint is not None:
                log.warning("batch job %s is gone; starting a new one", self._job_id)
                state = self._status.state if self._status else "gone"
                self._retire(f"batch job {self._job_id} is no longer running ({state})")
            await asyncio.to_thread(self._drop_tunnel)
            self._endpoint = await self._bring_up(self.report)
            self.generation += 1
            return self._endpoint

    def _still_running(self) -> bool:
        assert self._slurm is not None
        assert self._job_id is not None
        self._status = self._slurm.status(self._job_id)
        return self._status.running

    def begin(self) -> None:
        if self._early is not None or self._endpoint is not None:
            return
        self._early = threading.Thread(target=self._submit_early, name="jlabgw-submit", daemon=True)
        self._early.start()

    def _submit_early(self) -> None:
        try:
            t0 = time.monotonic()
            self._connect()
            t1 = time.monotonic()
            self._job_id = self._reuse_or_submit()
            t2 = time.monotonic()
            self._early_timings = {"connect": round(t1 - t0, 3), "submit": round(t2 - t1, 3)}
        except BaseException as exc:  # re-raised by start(), in the caller's context
            self._early_error = exc

    def _connect(self) -> None:
        if self._host is None:
            self._host = host_for(self._settings)
            self._slurm = SlurmClient(self._host)
        self._conn_dir = self._connection_dir()

    async def _bring_up(self, report: Progress) -> GatewayEndpoint:
        timings: dict[str, float] = {}
        clock = time.monotonic()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.monotonic()
            timings[name] = round(now - clock, 3)
            clock = now

        early, self._early = self._early, None
        if early is not None:  # begin() connected and submitted (or failed) already
            await report(0, None, "waiting for the batch job submitted at start-up")
            await asyncio.to_thread(early.join)
            error, self._early_error = self._early_error, None
            if error is not None:
                raise error
            timings.update(self._early_timings)
            clock = time.monotonic()
        else:
            await report(0, None, f"contacting SLURM on {self._where}")
            await asyncio.to_thread(self._connect)
            lap("connect")
            self._job_id = await asyncio.to_thread(self._reuse_or_submit)
            lap("submit")
        await self._wait_running(report)
        lap("queue_wait")
        # SSH to the node (~0.2 s) while its gateway starts: squeue names it once it runs.
        node = self._status.node if self._status else ""
        ahead = (
            asyncio.create_task(asyncio.to_thread(self._node_connection, node)) if node else None
        )
        try:
            info = await self._wait_connection_file(report)
        except BaseException:
            if ahead is not None:
                ahead.add_done_callback(_close_connection)
            raise
        lap("gateway_start")
        register_secret(info["token"])
        self._node = str(info["host"])
        await report(0, None, f"opening an SSH tunnel to {self._node}")
        conn = await self._take_node_connection(ahead, self._node)
        endpoint = await asyncio.to_thread(self._open_tunnel, info, conn)
        lap("tunnel")
        timings["total"] = round(sum(timings.values()), 3)
        self._timings = timings
        log.info("gateway of job %s up: %s", self._job_id, timings)
        return endpoint

    def _connection_dir(self) -> str:
        assert self._host is not None
        configured = expand_home(self._host, self._settings.connection_dir)
        self._host.run(["mkdir", "-p", "-m", "700", configured])
        return configured

    def _reuse_or_submit(self) -> str:
        assert self._host is not None
        assert self._slurm is not None
        assert self._conn_dir
        recorded = self._recorded_job()
        if recorded:
            status = self._slurm.status(recorded)
            if status.active and status.name == self._settings.job_name:
                log.info("reusing batch job %s (%s)", recorded, status.state)
                return recorded
        script = f"{self._conn_dir}/{self._settings.job_name}.sbatch"
        self._host.write_bytes(script, render_batch_script(self._settings).encode(), mode=0o600)
        job_id = self._slurm.submit(script, extra_args=[f"--output={self._conn_dir}/jlabgw-%j.log"])
        log.info("submitted batch job %s on %s", job_id, self._host.where)
        ensure_private_dir(self._state_file.parent)
        write_private_file(
            self._state_file,
            json.dumps({"job_id": job_id, "where": self._host.where}).encode(),
        )
        return job_id

    def _recorded_job(self) -> str | None:
        try:
            data = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return None
        job_id = data.get("job_id")
        return str(job_id) if job_id else None

    async def _wait_running(self, report: Progress) -> None:
        assert self._slurm is not None
        assert self._job_id is not None
        job_id = self._job_id
        t0 = time.monotonic()
        delay = _POLL_START
        while True:
            status = await asyncio.to_thread(self._slurm.status, job_id)
            self._status = status
            if status.running:
                return
            waited = time.monotonic() - t0
            if not status.active:
                raise BackendError(
                    f"batch job {job_id} ended ({status.state}) before its gateway started; "
                    f"its log is {self._conn_dir}/jlabgw-{job_id}.log on {self._where}"
                )
            hopeless = hopeless_reason(status)
            if hopeless or waited > self._settings.queue_timeout:
                await asyncio.to_thread(self._cancel_quietly, job_id)
                why = hopeless or (
                    f"still {status.state} after {self._settings.queue_timeout:.0f} s "
                    "(JLABGW_QUEUE_TIMEOUT)"
                )
                raise BackendError(
                    f"batch job {job_id} cannot start: {why} (SLURM reason: "
                    f"{status.reason or 'none given'}); it was cancelled. Adjust the "
                    "JLABGW_SLURM_* settings or try again later"
                )
            await report(
                waited,
                None,
                f"job {job_id} {status.state.lower()}: "
                f"{status.reason or 'waiting'} ({waited:.0f} s)",
            )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, _POLL_MAX)

    async def _wait_connection_file(self, report: Progress) -> dict[str, Any]:
        assert self._host is not None
        assert self._slurm is not None
        assert self._job_id
        path = f"{self._conn_dir}/jlabgw-{self._job_id}.json"
        await report(0, None, f"job {self._job_id} running; waiting for its gateway")
        started = time.monotonic()
        deadline = started + self._settings.gateway_start_timeout
        next_alive_check = started + _ALIVE_CHECK_EVERY
        delay = _POLL_START
        while time.monotonic() < deadline:
            try:
                data = await asyncio.to_thread(self._host.read_bytes, path)
                info: dict[str, Any] = json.loads(data)
                return info
            except FileNotFoundError:
                pass
            except ValueError:
                pass  # written atomically, so this means a foreign file: wait for ours
            if time.monotonic() >= next_alive_check:
                status = await asyncio.to_thread(self._slurm.status, self._job_id)
                if not status.active:
                    raise BackendError(
                        f"batch job {self._job_id} ended ({status.state}) before its gateway "
                        f"answered; see {self._conn_dir}/jlabgw-{self._job_id}.log on "
                        f"{self._where}"
                    )
                next_alive_check = time.monotonic() + _ALIVE_CHECK_EVERY
            await asyncio.sleep(delay)
            if time.monotonic() - started > 5:  # slower than usual: back off
                delay = min(delay * 1.5, _FILE_POLL_MAX)
        raise BackendError(
            f"batch job {self._job_id} is running but its gateway did not answer within "
            f"{self._settings.gateway_start_timeout:.0f} s (JLABGW_GATEWAY_START_TIMEOUT); "
            f"see {self._conn_dir}/jlabgw-{self._job_id}.log on {self._where}. Does "
            "JLABGW_REMOTE_SETUP give a Python with jupyter-kernel-gateway and ipykernel?"
        )

    def _node_connection(self, node: str) -> SSHConnection:
        conn = SSHConnection(
            node,
            self._settings,
            port=self._settings.compute_ssh_port,
            jump=self._settings.ssh_host or None,
        )
        conn.transport  # noqa: B018 - connect now: errors belong to this call
        return conn

    async def _take_node_connection(
        self, ahead: asyncio.Task[SSHConnection] | None, node: str
    ) -> SSHConnection | None:
        """The connection made ahead, if it is to the node the gateway reported, else None."""
        if ahead is None:
            return None
        try:
            conn = await ahead
        except JlabgwError as exc:
            log.info("SSH to %s ahead of the gateway failed (%s); trying again", node, exc)
            return None
        if conn.spec.alias != node:  # squeue's node name is not the node's hostname
            await asyncio.to_thread(conn.close)
            return None
        return conn

    def _open_tunnel(self, info: dict[str, Any], conn: SSHConnection | None) -> GatewayEndpoint:
        self._node_conn = conn or self._node_connection(str(info["host"]))
        self._gateway_key = (info.get("port"), info.get("started_at"))
        self._forwarder = Forwarder(self._node_conn, "127.0.0.1", int(info["port"])).start()
        return GatewayEndpoint(url=self._forwarder.url, token=str(info["token"]))

    @property
    def _where(self) -> str:
        return self._host.where if self._host else "the login node"

    def _cancel_quietly(self, job_id: str) -> None:
        assert self._slurm is not None
        with contextlib.suppress(JlabgwError):
            self._slurm.cancel(job_id)

    def _drop_tunnel(self) -> None:
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        if self._node_conn is not None:
            self._node_conn.close()
            self._node_conn = None
        self._endpoint = None

    def registry_name(self) -> str | None:
        return f"slurm-{self._settings.job_name}.json"

    def keeps_kernels(self) -> bool:
        return self._settings.keep_job

    def identity(self) -> str | None:
        return f"slurm:{self._job_id}" if self._endpoint is not None and self._job_id else None

    async def notices(self) -> list[str]:
        warn = self._settings.walltime_warn * 60
        if not warn or self._job_id is None or self._slurm is None or self._endpoint is None:
            return []
        now = time.monotonic()
        if now - self._status_at > _NOTICE_REFRESH:
            self._status_at = now
            try:
                self._status = await asyncio.to_thread(self._slurm.status, self._job_id)
            except JlabgwError as exc:  # a notice must never fail a tool call
                log.info("cannot refresh the job's time left: %s", exc)
        left = self._status.seconds_left if self._status else None
        if left is None or left > warn:
            return []
        return [
            f"batch job {self._job_id} reaches its walltime in about {max(left, 0) // 60} min "
            f"({self._status.time_left if self._status else '?'} left): its kernels and "
            "variables will be gone then. Save what matters to files; the notebook is safe, "
            "and start_session_resume_notebook rebuilds the state on a new job"
        ]

    async def lost(self) -> str | None:
        if self._job_id is None or self._slurm is None:
            return None
        job_id = self._job_id
        status = await asyncio.to_thread(self._slurm.status, job_id)
        self._status = status
        if status.running:
            replaced = await asyncio.to_thread(self._gateway_replaced, job_id)
            if replaced is None:
                return None  # same gateway: the tunnel only dropped, reconnecting is right
            if replaced:
                await asyncio.to_thread(self._drop_tunnel)  # the next start reuses the job
                return replaced
            # the job ended while we looked
        await asyncio.to_thread(self._drop_tunnel)  # the next start submits a new job
        self._state_file.unlink(missing_ok=True)
        self._job_id = None
        state = self._status.state if self._status else status.state
        return f"batch job {job_id} is no longer running ({state})"

    def _gateway_replaced(self, job_id: str) -> str | None:
        """Whether the job's supervisor replaced the gateway we tunnel to (it restarts one that
        died): None if ours is still the one on record, "" if the job ended meanwhile, else why
        ours is gone. A gateway being restarted has no connection file for a second or two."""
        assert self._host is not None
        assert self._slurm is not None
        path = f"{self._conn_dir}/jlabgw-{job_id}.json"
        deadline = time.monotonic() + _REPLACE_WAIT
        while True:
            try:
                info = json.loads(self._host.read_bytes(path))
            except FileNotFoundError:
                info = None
            except (OSError, ValueError, JlabgwError) as exc:
                log.info("cannot read %s to check the gateway: %s", path, exc)
                return None  # cannot tell; the caller's reconnect schedule decides
            if info is not None:
                if (info.get("port"), info.get("started_at")) == self._gateway_key:
                    return None
                what = str(info.get("previous_exit") or "the gateway stopped")
                return (
                    f"{what} in batch job {job_id}, and the job started a new gateway "
                    f"(restart {info.get('restarts', '?')})"
                )
            status = self._slurm.status(job_id)
            self._status = status
            if not status.running:
                return ""
            if time.monotonic() > deadline:
                return (
                    f"the Kernel Gateway in batch job {job_id} stopped and has not come back "
                    f"for {_REPLACE_WAIT:.0f} s; see {self._conn_dir}/jlabgw-{job_id}.log on "
                    f"{self._where}"
                )
            time.sleep(0.5)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close_now)

    def close_now(self) -> None:
        early = self._early
        if early is not None:  # a submission under way must finish, or its job is orphaned
            early.join(timeout=2 * self._settings.ssh_timeout + 30)
        self._drop_tunnel()
        if self._job_id and not self._settings.keep_job:
            log.info("cancelling batch job %s", self._job_id)
            with contextlib.suppress(CommandError, JlabgwError):
                self._cancel_quietly(self._job_id)
            self._state_file.unlink(missing_ok=True)
            self._job_id = None
        if self._host is not None:
            self._host.close()
            self._host = None
            self._slurm = None

    # -- status ------------------------------------------------------------------------------

    def describe(self) -> BackendStatus:
        status = self._status
        return BackendStatus(
            self.name,
            GatewayStatus(
                state="running"
                if self._endpoint
                else ("starting" if self._lock.locked() else "stopped"),
                url=self._endpoint.url if self._endpoint else None,
                token_file=f"{self._conn_dir}/jlabgw-{self._job_id}.json"
                if self._endpoint
                else None,
                token_host=self._where if self._endpoint else None,
                start_seconds=self._timings or None,
            ),
            JobInfo(
                id=self._job_id,
                state=status.state if status else None,
                reason=status.reason if status else None,
                node=self._node or (status.node if status else None),
                time_left=status.time_left if status else None,
                seconds_left=status.seconds_left if status else None,
                where=self._where,
            ),
        )


def _close_connection(task: asyncio.Task[SSHConnection]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()
