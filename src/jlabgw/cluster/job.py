"""One batch job that runs a gateway, seen from the login node: submit or reuse it, wait for it
in the queue, wait for its connection file, and tell a replaced gateway from a dropped tunnel.
Whatever the scheduler (:class:`~jlabgw.cluster.scheduler.Scheduler`: SLURM, Grid Engine).

Every command and file goes through one :class:`~jlabgw.cluster.host.Host` (here, or the login
node over SSH), which is what tests replace.

The login node is shared by hundreds of users (batchspawner's 30 s polls overloaded one at 200+
users, jupyterhub/batchspawner#292), so the scheduler is asked sparingly: often in the first
minute of a wait (an idle node starts a job in ~0.5 s), then at most twice a minute while the
job pends and once a minute while it runs (the walltime notice), one query covering all of
this process's jobs on that login node where the scheduler can (:meth:`BatchJob.refresh`).
Checks made because something failed (:meth:`gateway_replaced`, the backend's ``lost``) ask
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from jlabgw.cluster.connection_file import (
    GatewayInfo,
    JobFiles,
    check_private,
    read_connection_file,
)
from jlabgw.cluster.host import Host, LocalHost, SSHHost, expand_home, host_for
from jlabgw.cluster.leases import JobLeases, describe_holders
from jlabgw.cluster.scheduler import JobStatus, Scheduler
from jlabgw.config import Settings
from jlabgw.errors import BackendError, JlabgwError
from jlabgw.progress import Progress

__all__ = ["BatchJob", "private_connection_dir", "state_file_for"]

log = logging.getLogger(__name__)

# The queue while queued: soon after submission (an idle node starts the job in ~0.5 s), then
# less and less often for FAST_FOR seconds, then every PENDING_POLL seconds (progress still
# comes every progress_interval, from the last status seen). The connection file is a stat
# over an open SFTP channel: cheap, so it is polled every 0.1 s at first (the gateway is up
# ~1.5 s after the job starts); the scheduler is asked once a second meanwhile whether the job
# is still alive, every RUNNING_POLL seconds after FAST_FOR.
POLL_START = 0.1
POLL_MAX = 2.0
FAST_FOR = 60.0
PENDING_POLL = 30.0  # <= 2 queries a minute per server while its job pends
RUNNING_POLL = 60.0  # <= 1 a minute while it runs
FILE_POLL_MAX = 1.0
ALIVE_CHECK_EVERY = 1.0
REPLACE_WAIT = 60.0  # how long a dead gateway's restart in the job may take
REPLACE_POLL = 0.5

_DUE_SLACK = 1e-6  # a status this much short of max_age is due (sleeps end on float sums)

# The clocks and the sleep of the waits: tests and benchmarks run hours of them in virtual time.
_now = time.monotonic
_wall = time.time
_sleep = asyncio.sleep


@runtime_checkable
class _ListsJobs(Protocol):
    """A scheduler that answers for several jobs in one query (SLURM: ``squeue -j A,B``)."""

    def listed(self, job_ids: Sequence[str]) -> dict[str, JobStatus]: ...


class _Queue:
    """This process's jobs of one scheduler on one login node, as one user: a status query for
    one of them can cover them all. ``lock`` serialises the queries (a caller that waited for
    another's query may find its status fresh enough); ``jobs`` changes under ``_queues_lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: weakref.WeakSet[BatchJob] = weakref.WeakSet()


_queues: weakref.WeakValueDictionary[tuple[object, ...], _Queue] = weakref.WeakValueDictionary()
_queues_lock = threading.Lock()


def _queue_of(scheduler: Scheduler) -> _Queue:
    """The queue shared by the jobs whose scheduler of this kind answers on the same login
    node: this machine, or one SSH destination (user, host, port, route); any other host (a
    test's) shares with itself only."""
    host = scheduler.host
    where: object
    if isinstance(host, LocalHost):
        where = "this machine"
    elif isinstance(host, SSHHost):
        spec = host.connection.spec
        where = (spec.user, spec.hostname, spec.port, spec.proxy_jump, spec.proxy_command)
    else:
        where = id(host)  # unique while the host lives, and a job holding the queue holds it
    key = (type(scheduler), where)
    with _queues_lock:
        queue = _queues.get(key)
        if queue is None:
            queue = _queues[key] = _Queue()
        return queue


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
        self._status_at = 0.0  # when the query that saw ``status`` began (_now)
        self._queue = _queue_of(scheduler)
        with _queues_lock:
            self._queue.jobs.add(self)

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
        # (release never cancels over a record it cannot read: the idle timeout ends the job)
        others = self.leases.release(self.job_id, self.cancel_quietly if cancel else None)
        if not others and cancel:
            self.job_id = None
        return others

    def cancel_quietly(self) -> None:
        """``scancel`` the job, ignoring failures (it may have ended already)."""
        if self.job_id is not None:
            with contextlib.suppress(JlabgwError):
                self.scheduler.cancel(self.job_id)

    # -- state ---------------------------------------------------------------------------------

    @staticmethod
    def clock() -> float:
        """The monotonic clock status ages are measured on."""
        return _now()

    def refresh(self, max_age: float = 0.0) -> JobStatus:
        """The job's state: the last one seen if younger than ``max_age`` seconds, else asked
        of the scheduler now. Where the scheduler answers for several jobs at once, the query
        covers this process's other active jobs on the same login node too (resource shapes,
        profiles on one cluster), so theirs are fresh as well. Blocking: call it from a thread."""
        job_id = self._job
        queue = self._queue
        with queue.lock:
            seen = self.status
            fresh = _now() - self._status_at < max_age - _DUE_SLACK
            if seen is not None and seen.job_id == job_id and fresh:
                return seen
            asked = _now()
            with _queues_lock:
                others = [
                    (job, job.job_id)
                    for job in queue.jobs
                    if job is not self
                    and job.job_id is not None
                    and (job.status is None or job.status.active)
                ]
            status: JobStatus | None = None
            if others and isinstance(self.scheduler, _ListsJobs):
                ids = list(dict.fromkeys([job_id, *(other_id for _, other_id in others)]))
                listed = self.scheduler.listed(ids)
                for job, other_id in others:
                    if other_id in listed:
                        job._saw(listed[other_id], asked)
                status = listed.get(job_id)
            if status is None:  # one job, or ours is no longer listed (sacct may know the end)
                status = self.scheduler.status(job_id)
            self._saw(status, asked)
            return status

    def _saw(self, status: JobStatus, at: float) -> None:
        self.status = status
        self._status_at = at

    async def wait_running(self, report: Progress) -> JobStatus:
        """Until the job runs, reporting why it waits (and when the scheduler expects it to
        start); a job that cannot start is cancelled. The scheduler is asked at once, then
        after 0.1 s growing to 2 s for the first minute, then every PENDING_POLL seconds;
        progress comes every ``progress_interval`` in between, from the last status seen."""
        job_id = self._job
        t0 = _now()
        delay = POLL_START
        interval = 0.0
        while True:
            status = await asyncio.to_thread(self.refresh, interval)
            if status.running:
                return status
            waited = _now() - t0
            if not status.active:
                raise BackendError(
                    f"batch job {job_id} ended ({status.state}) before its gateway started; "
                    f"its log is {self._log_hint()}"
                )
            hopeless = self.scheduler.hopeless_reason(status)
            if hopeless or waited > self._settings.queue_timeout:
                if hopeless:  # it never starts, for anybody waiting on it
                    await asyncio.to_thread(self.cancel_quietly)
                    fate = "it was cancelled"
                else:  # our patience is over; another server of ours may wait on
                    others = await asyncio.to_thread(self.leave, True)
                    fate = (
                        f"it stays queued for the other jlabgw server(s) waiting on it "
                        f"({describe_holders(others)})"
                        if others
                        else "it was cancelled"
                    )
                why = hopeless or (
                    f"still {status.state} after {self._settings.queue_timeout:.0f} s "
                    "(JLABGW_QUEUE_TIMEOUT)"
                )
                raise BackendError(
                    f"batch job {job_id} cannot start: {why} ({self.scheduler.label} reason: "
                    f"{status.reason or 'none given'}); {fate}. Adjust the "
                    f"{self.scheduler.settings_hint} settings or try again later"
                )
            await report(waited, None, self._waiting(status, waited))
            if waited < FAST_FOR:
                interval, delay = delay, min(delay * 1.5, POLL_MAX)
            else:
                interval = PENDING_POLL
            due = self._status_at + interval  # the next query; progress until then
            await _sleep(max(0.0, min(due - _now(), self._settings.progress_interval)))

    def _waiting(self, status: JobStatus, waited: float) -> str:
        """The progress message of a job that waits: why, and the scheduler's start estimate."""
        why = status.reason or "waiting"
        estimate = status.start_estimate
        ahead = estimate - _wall() if estimate is not None else 0.0
        if estimate is not None and ahead > 0:
            at = datetime.fromtimestamp(estimate, UTC)
            when = f"{at:%H:%M}" if ahead < 86400 else f"{at:%Y-%m-%d %H:%M}"
            why += f"; {self.scheduler.label} expects it to start at {when} UTC, {_in(ahead)}"
        return f"job {status.job_id} {status.state.lower()}: {why} ({waited:.0f} s)"

    async def wait_gateway(self, report: Progress) -> GatewayInfo:
        """The running job's connection file, once its gateway answers (bounded)."""
        job_id = self._job
        path = self.files.connection_file(job_id)
        await report(0, None, f"job {job_id} running; waiting for its gateway")
        started = _now()
        deadline = started + self._settings.gateway_start_timeout
        next_alive_check = started + ALIVE_CHECK_EVERY
        delay = POLL_START
        while _now() < deadline:
            try:
                info = await asyncio.to_thread(read_connection_file, self.host, path)
            except ValueError:
                info = None  # written atomically, so this means a foreign file: wait for ours
            if info is not None:
                return info
            if _now() >= next_alive_check:
                status = await asyncio.to_thread(self.refresh, ALIVE_CHECK_EVERY)
                if not status.active:
                    raise BackendError(
                        f"batch job {job_id} ended ({status.state}) before its gateway "
                        f"answered; see {self._log_hint()}"
                    )
                slow = _now() - started >= FAST_FOR  # a slow start: once a minute after the first
                next_alive_check = _now() + (RUNNING_POLL if slow else ALIVE_CHECK_EVERY)
            await _sleep(delay)
            if _now() - started > 5:  # slower than usual: back off
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
        with _queues_lock:
            self._queue.jobs.discard(self)
        self.host.close()


def _in(seconds: float) -> str:
    """A time ahead, roughly: "in about 12 min"."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "in under a minute"
    if minutes < 120:
        return f"in about {minutes} min"
    hours = round(seconds / 3600)
    return f"in about {hours} h" if hours < 48 else f"in about {round(hours / 24)} days"


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
    """Where this machine records ``backend``'s job of ``settings.job_name`` on its cluster
    (to reuse and lease it): one record per cluster, so two clusters' jobs of the same name
    never take each other's place (see :func:`cluster_key`)."""
    return settings.state_dir / f"{cluster_key(settings, backend)}.json"


def cluster_key(settings: Settings, backend: str) -> str:
    """``backend-jobname``, with the login node (``@user_host_port``) when there is one."""
    key = f"{backend}-{settings.job_name}"
    if settings.ssh_host:
        key += "@" + re.sub(r"[^A-Za-z0-9._-]", "_", settings.ssh_host)
        if settings.ssh_port:
            key += f"_{settings.ssh_port}"
    return key
