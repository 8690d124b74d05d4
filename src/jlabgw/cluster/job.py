"""One batch job that runs a gateway, seen from the login node: submit or reuse it, wait for it
in the queue, wait for its connection file, and tell a replaced gateway from a dropped tunnel.
Whatever the scheduler (:class:`~jlabgw.cluster.scheduler.Scheduler`: SLURM, Grid Engine).

Every command and file goes through one :class:`~jlabgw.cluster.host.Host` (here, or the login
node over SSH), which is what tests replace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from jlabgw.cluster.connection_file import (
    GatewayInfo,
    JobFiles,
    check_private,
    read_connection_file,
)
from jlabgw.cluster.host import Host, expand_home, host_for
from jlabgw.cluster.leases import JobLeases
from jlabgw.cluster.scheduler import JobStatus, Scheduler
from jlabgw.config import Settings
from jlabgw.errors import BackendError, JlabgwError
from jlabgw.progress import Progress

__all__ = ["BatchJob", "private_connection_dir", "state_file_for"]

log = logging.getLogger(__name__)

# The queue while queued: soon after submission (an idle node starts the job in ~0.5 s), then
# less and less often. The connection file is a stat over an open SFTP channel: cheap, so it
# is polled every 0.1 s at first (the gateway is up ~1.5 s after the job starts); the
# scheduler is asked at most once a second meanwhile whether the job is still alive.
POLL_START = 0.1
POLL_MAX = 2.0
FILE_POLL_MAX = 1.0
ALIVE_CHECK_EVERY = 1.0
REPLACE_WAIT = 60.0  # how long a dead gateway's restart in the job may take
REPLACE_POLL = 0.5


class BatchJob:
    """This server's batch job (at most one at a time) on ``host``, and the last status seen.

    ``job_id`` is None until :meth:`reuse_or_submit`, and again after :meth:`forget`. The job
    recorded in ``state_file`` (this machine) is reused while it runs under our job name, and
    shared with the other servers holding a lease on it there (:mod:`jlabgw.cluster.leases`)."""

    def __init__(
        self, scheduler: Scheduler, settings: Settings, files: JobFiles, state_file: Path
    ) -> None:
        self.host = scheduler.host
        self.scheduler = scheduler
        self.files = files
        self._settings = settings
        self.leases = JobLeases(state_file)
        self.job_id: str | None = None
        self.status: JobStatus | None = None

    @classmethod
    def on_login_node(
        cls, settings: Settings, scheduler: Callable[[Host], Scheduler], backend: str
    ) -> BatchJob:
        """Connect to the login node (or use this machine) and make the connection dir."""
        host = host_for(settings)
        try:
            conn_dir = expand_home(host, settings.connection_dir)
            host.run(["mkdir", "-p", "-m", "700", conn_dir])
            private_connection_dir(host, conn_dir)
        except BaseException:
            host.close()
            raise
        return cls(scheduler(host), settings, JobFiles(conn_dir), state_file_for(settings, backend))

    @property
    def where(self) -> str:
        return self.host.where

    @property
    def _job(self) -> str:
        assert self.job_id is not None, "no batch job submitted yet"
        return self.job_id

    def _log_hint(self) -> str:
        return f"{self.files.log(self._job)} on {self.where}"

    # -- submit --------------------------------------------------------------------------------

    def reuse_or_submit(self) -> str:
        """Our recorded job if it still runs (or waits) under our name, else a new one; this
        server holds a lease on it either way (another server of ours may share it)."""
        name = self._settings.job_name

        def usable(job_id: str) -> bool:
            status = self.scheduler.status(job_id)
            return status.active and status.name == name

        def submit() -> str:
            script = self.files.script(name)
            rendered = self.scheduler.render(self._settings).encode()
            self.host.write_bytes(script, rendered, mode=0o600)
            job_id = self.scheduler.submit(script, self.files.log(self.scheduler.log_placeholder))
            # A job id can come again (a scheduler reinstalled, Grid Engine's ids wrap) and a
            # killed job (qdel is SIGKILL) leaves its connection file: that one is not ours.
            # The new job writes its own a second or more after it starts.
            self.host.run(["rm", "-f", self.files.connection_file(job_id)], check=False)
            return job_id

        job_id, reused = self.leases.acquire(usable, submit, self.where)
        if reused:
            log.info("reusing batch job %s on %s", job_id, self.where)
        else:
            log.info("submitted batch job %s on %s", job_id, self.where)
        self.job_id = job_id
        return job_id

    def forget(self) -> None:
        """The job is gone: the next :meth:`reuse_or_submit` submits a new one."""
        self.leases.forget(self.job_id)
        self.job_id = None

    def sharers(self) -> list[dict[str, str]]:
        """The other live servers holding a lease on our job."""
        return self.leases.others(self.job_id)

    def leave(self, cancel: bool) -> list[dict[str, str]]:
        """Give up our lease; with ``cancel``, ``scancel`` the job if we were its last live
        holder. Returns the live holders that keep it (then it was not cancelled)."""
        if self.job_id is None:
            return []
        try:
            others = self.leases.release(self.job_id, self.cancel_quietly if cancel else None)
        except OSError as exc:  # the lease file is unwritable: cancelling is the safe default
            log.warning("cannot update the job lease %s: %s", self.leases.path, exc)
            if cancel:
                self.cancel_quietly()
            return []
        if not others and cancel:
            self.job_id = None
        return others

    def cancel_quietly(self) -> None:
        """``scancel`` the job, ignoring failures (it may have ended already)."""
        if self.job_id is not None:
            with contextlib.suppress(JlabgwError):
                self.scheduler.cancel(self.job_id)

    # -- state ---------------------------------------------------------------------------------

    def refresh(self) -> JobStatus:
        """Ask the scheduler for the job's state now."""
        self.status = self.scheduler.status(self._job)
        return self.status

    async def wait_running(self, report: Progress) -> JobStatus:
        """Until the job runs, reporting why it waits; a job that cannot start is cancelled."""
        job_id = self._job
        t0 = time.monotonic()
        delay = POLL_START
        while True:
            status = await asyncio.to_thread(self.refresh)
            if status.running:
                return status
            waited = time.monotonic() - t0
            if not status.active:
                raise BackendError(
                    f"batch job {job_id} ended ({status.state}) before its gateway started; "
                    f"its log is {self._log_hint()}"
                )
            hopeless = self.scheduler.hopeless_reason(status)
            if hopeless or waited > self._settings.queue_timeout:
                await asyncio.to_thread(self.cancel_quietly)
                why = hopeless or (
                    f"still {status.state} after {self._settings.queue_timeout:.0f} s "
                    "(JLABGW_QUEUE_TIMEOUT)"
                )
                raise BackendError(
                    f"batch job {job_id} cannot start: {why} ({self.scheduler.label} reason: "
                    f"{status.reason or 'none given'}); it was cancelled. Adjust the "
                    f"{self.scheduler.settings_hint} settings or try again later"
                )
            await report(
                waited,
                None,
                f"job {job_id} {status.state.lower()}: "
                f"{status.reason or 'waiting'} ({waited:.0f} s)",
            )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX)

    async def wait_gateway(self, report: Progress) -> GatewayInfo:
        """The running job's connection file, once its gateway answers (bounded)."""
        job_id = self._job
        path = self.files.connection_file(job_id)
        await report(0, None, f"job {job_id} running; waiting for its gateway")
        started = time.monotonic()
        deadline = started + self._settings.gateway_start_timeout
        next_alive_check = started + ALIVE_CHECK_EVERY
        delay = POLL_START
        while time.monotonic() < deadline:
            try:
                info = await asyncio.to_thread(read_connection_file, self.host, path)
            except ValueError:
                info = None  # written atomically, so this means a foreign file: wait for ours
            if info is not None:
                return info
            if time.monotonic() >= next_alive_check:
                status = await asyncio.to_thread(self.refresh)
                if not status.active:
                    raise BackendError(
                        f"batch job {job_id} ended ({status.state}) before its gateway "
                        f"answered; see {self._log_hint()}"
                    )
                next_alive_check = time.monotonic() + ALIVE_CHECK_EVERY
            await asyncio.sleep(delay)
            if time.monotonic() - started > 5:  # slower than usual: back off
                delay = min(delay * 1.5, FILE_POLL_MAX)
        raise BackendError(
            f"batch job {job_id} is running but its gateway did not answer within "
            f"{self._settings.gateway_start_timeout:.0f} s (JLABGW_GATEWAY_START_TIMEOUT); "
            f"see {self._log_hint()}. Does "
            "JLABGW_REMOTE_SETUP give a Python with jupyter-kernel-gateway and ipykernel?"
        )

    def gateway_replaced(self, key: tuple[int, float | None] | None) -> str | None:
        """Whether the job's supervisor replaced the gateway ``key`` names (it restarts one
        that died): None if that one is still on record (or nobody can tell), "" if the job
        ended meanwhile, else why ours is gone. A gateway being restarted has no connection
        file for a second or two. Blocking: call it from a thread."""
        job_id = self._job
        path = self.files.connection_file(job_id)
        deadline = time.monotonic() + REPLACE_WAIT
        while True:
            try:
                info = read_connection_file(self.host, path)
            except (OSError, ValueError, JlabgwError) as exc:
                log.info("cannot read %s to check the gateway: %s", path, exc)
                return None  # cannot tell; the caller's reconnect schedule decides
            if info is not None:
                if info.key == key:
                    return None
                what = info.previous_exit or "the gateway stopped"
                restarts = "?" if info.restarts is None else info.restarts
                return (
                    f"{what} in batch job {job_id}, and the job started a new gateway "
                    f"(restart {restarts})"
                )
            if not self.refresh().running:
                return ""
            if time.monotonic() > deadline:
                return (
                    f"the Kernel Gateway in batch job {job_id} stopped and has not come back "
                    f"for {REPLACE_WAIT:.0f} s; see {self._log_hint()}"
                )
            time.sleep(REPLACE_POLL)

    def walltime_notice(self, warn_seconds: float) -> str | None:
        """A warning when the job's walltime ends within ``warn_seconds`` (last status seen)."""
        left = self.status.seconds_left if self.status else None
        if left is None or left > warn_seconds:
            return None
        return (
            f"batch job {self.job_id} reaches its walltime in about {max(left, 0) // 60} min "
            f"({self.status.time_left if self.status else '?'} left): its kernels and "
            "variables will be gone then. Save what matters to files; the notebook is safe, "
            "and start_session_resume_notebook rebuilds the state on a new job"
        )

    def close(self) -> None:
        self.host.close()


def private_connection_dir(host: Host, conn_dir: str) -> None:
    """The connection dir must be ours and closed to others (``mkdir -p -m 700`` leaves an
    existing dir as it is). Ours but open: closed with a warning; another user's: refused."""
    info = host.stat(conn_dir)
    if info is None:
        raise BackendError(f"the connection dir {conn_dir} on {host.where} vanished after mkdir")
    if info.mode & 0o077 and (info.uid is None or info.uid == host.uid()):
        log.warning(
            "the connection dir %s on %s had mode %o (others could reach tokens there); "
            "setting it to 700",
            conn_dir,
            host.where,
            info.mode,
        )
        host.run(["chmod", "700", conn_dir])
        info = host.stat(conn_dir) or info
    check_private(host, conn_dir, info, "connection dir", 0o700)


def state_file_for(settings: Settings, backend: str) -> Path:
    """Where this machine records ``backend``'s job of ``settings.job_name`` (to reuse it)."""
    return settings.state_dir / f"{backend}-{settings.job_name}.json"
