"""How often a server asks the scheduler (issue 17: a login node serves hundreds of users), counted
against a fake login node in virtual time: the waits' clock and sleep are replaced, so ten
minutes of polling take milliseconds and every count is exact. The faked boundary is the Host
that runs squeue; BatchJob, the SLURM client and the backend's walltime check are real.

After the first minute a server asks at most twice a minute while its job pends and once a
minute while it runs; its jobs on one login node share the queries. The first minute stays fast
(0.1 s, then 1.5 times longer up to 2 s): a free node starts a job in ~0.5 s.
"""

from __future__ import annotations

import asyncio
import heapq
import json
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from jlabgw.cluster import job as job_module
from jlabgw.cluster.backends.slurm import SlurmBackend
from jlabgw.cluster.connection_file import JobFiles
from jlabgw.cluster.host import FileStat, Host
from jlabgw.cluster.job import BatchJob
from jlabgw.cluster.slurm.scheduler import SlurmScheduler
from jlabgw.cluster.ssh.connection import CommandResult
from jlabgw.errors import BackendError
from jlabgw.jupyter.endpoint import GatewayEndpoint
from tests.helpers import make_settings

pytestmark = pytest.mark.anyio

CONN_DIR = "/home/u/.jlabgw/connections"
EPOCH = 1_800_000_000.0  # the wall clock when the virtual clock starts
START = 5000.0  # the monotonic clock then (arbitrary, as a real one's)
MINUTES = 10


class VirtualTime:
    """A clock that moves only when every task run under it sleeps on it, to the earliest
    wake-up: what real time would give, with no real waiting (threads still do their work)."""

    def __init__(self) -> None:
        self.now = START
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.elapsed

    @property
    def elapsed(self) -> float:
        return self.now - START

    async def sleep(self, seconds: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count += 1
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), self._count, wake))
        await wake

    async def run(
        self, coros: Sequence[Coroutine[Any, Any, Any]], until: float
    ) -> list[asyncio.Task[Any]]:
        """Run ``coros`` until they end or the clock would pass ``until`` seconds from its
        start; the tasks, ended or cancelled."""
        tasks = [asyncio.create_task(coro) for coro in coros]
        for _ in range(1_000_000):
            await self._settle(tasks)
            if all(t.done() for t in tasks) or self._sleepers[0][0] > START + until:
                break
            self.now = self._sleepers[0][0]
            while self._sleepers and self._sleepers[0][0] <= self.now:
                heapq.heappop(self._sleepers)[2].set_result(None)
        else:
            raise AssertionError("virtual time never reached its end")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return tasks

    async def _settle(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Until every live task sleeps on this clock (one in a thread is still working)."""
        for _ in range(100_000):
            if len(self._sleepers) >= sum(not t.done() for t in tasks):
                return
            await asyncio.sleep(0.001)
        raise AssertionError("a task neither ended nor slept")


class CountingLoginNode(Host):
    """squeue/sacct/scancel on a queue whose jobs stay in the state they were given; every
    squeue is recorded with the virtual time it ran at."""

    where = "counting login node"

    def __init__(self, clock: VirtualTime) -> None:
        self.clock = clock
        self.jobs: dict[str, tuple[str, str]] = {}  # id -> (state, reason)
        self.squeues: list[tuple[float, list[str]]] = []
        self.files: dict[str, bytes] = {}

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        argv = list(argv)
        command = argv[2:] if argv[0] == "env" else argv
        if command[0] == "squeue":
            asked = command[command.index("-j") + 1].split(",")
            self.squeues.append((self.clock.elapsed, asked))
            lines = [
                f"{i}|{self.jobs[i][0]}|{self.jobs[i][1]}|node1|00:04:00|N/A|job{i}\n"
                for i in asked
                if i in self.jobs
            ]
            if not lines and len(asked) == 1:
                return CommandResult(argv, 1, "", "slurm_load_jobs error: Invalid job id")
            return CommandResult(argv, 0, "".join(lines), "")
        if command[0] in ("sacct", "scancel"):
            return CommandResult(argv, 0, "", "")
        raise AssertionError(f"unexpected command {argv}")

    def read_bytes(self, path: str) -> bytes:
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path]

    def write_bytes(self, path: str, data: bytes, mode: int = 0o600) -> None:
        self.files[path] = data

    def stat(self, path: str) -> FileStat | None:
        return FileStat(len(self.files[path]), 0o600, 0.0) if path in self.files else None

    def uid(self) -> int:
        return 1000

    def times(self) -> list[float]:
        return [t for t, _ in self.squeues]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    clock = VirtualTime()
    monkeypatch.setattr(job_module, "_now", clock.monotonic)
    monkeypatch.setattr(job_module, "_wall", clock.wall)
    monkeypatch.setattr(job_module, "_sleep", clock.sleep)
    return clock


def a_job(host: CountingLoginNode, tmp_path: Path, job_id: str, state: str) -> BatchJob:
    settings = make_settings(
        tmp_path, job_name=f"job{job_id}", queue_timeout="7200", gateway_start_timeout="600"
    )
    job = BatchJob(
        SlurmScheduler(host), settings, JobFiles(CONN_DIR), tmp_path / f"state-{job_id}.json"
    )
    host.jobs[job_id] = (state, "Priority" if state == "PENDING" else "None")
    job.job_id = job_id  # submitted (or reused): what reuse_or_submit leaves
    return job


def per_minute(times: list[float], minutes: int = MINUTES) -> list[int]:
    return [sum(60 * m <= t < 60 * (m + 1) for t in times) for m in range(minutes)]


def most_in_any_minute(times: list[float], since: float) -> int:
    """The most queries in any 60 s window starting at or after ``since``."""
    later = [t for t in times if t >= since]
    return max((sum(t <= u < t + 60 for u in later) for t in later), default=0)


async def test_a_pending_job_is_asked_about_at_most_twice_a_minute_after_the_first(
    clock: VirtualTime, tmp_path: Path
) -> None:
    host = CountingLoginNode(clock)
    job = a_job(host, tmp_path, "100", "PENDING")
    heard: list[float] = []

    async def progress(done: float, total: float | None, message: str) -> None:
        heard.append(clock.elapsed)

    await clock.run([job.wait_running(progress)], until=MINUTES * 60)
    times = host.times()
    # the first minute as before: a job a free node starts is seen running within ~0.5 s
    assert times[:6] == pytest.approx([0.0, 0.1, 0.25, 0.475, 0.8125, 1.31875])
    counts = per_minute(times)
    assert counts[0] == 36  # 0.1 s growing to 2 s, as before
    assert counts[1:] == [2] * (MINUTES - 1)
    assert most_in_any_minute(times, since=60) == 2
    # progress still comes every progress_interval (5 s) from the last status seen
    assert per_minute(heard)[1:] == [12] * (MINUTES - 1)


async def test_before_issue_17_a_pending_job_was_asked_about_every_2_s(
    clock: VirtualTime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old schedule (what benchmarks/scheduler_load.py compares against): 0.1 s growing to
    2 s, and 2 s for as long as the job pends."""
    monkeypatch.setattr(job_module, "PENDING_POLL", job_module.POLL_MAX)
    host = CountingLoginNode(clock)
    job = a_job(host, tmp_path, "100", "PENDING")
    await clock.run([job.wait_running(_no_progress)], until=MINUTES * 60)
    assert per_minute(host.times())[1:] == [30] * (MINUTES - 1)


async def test_a_server_s_jobs_on_one_login_node_share_their_queries(
    clock: VirtualTime, tmp_path: Path
) -> None:
    """Three pending jobs of one server (resource shapes) started 20 s apart: one squeue asks
    for all of them, and after the last one's first minute they ask twice a minute together."""
    host = CountingLoginNode(clock)
    jobs = [a_job(host, tmp_path, str(100 + n), "PENDING") for n in range(3)]
    heard: dict[str, list[float]] = {job.job_id or "": [] for job in jobs}

    async def waiting(job: BatchJob, start: float) -> None:
        await clock.sleep(start)

        async def progress(done: float, total: float | None, message: str) -> None:
            heard[job.job_id or ""].append(clock.elapsed)

        await job.wait_running(progress)

    await clock.run([waiting(job, 20.0 * n) for n, job in enumerate(jobs)], until=MINUTES * 60)
    times = host.times()
    assert most_in_any_minute(times, since=100) == 2
    assert per_minute(times)[2:] == [2] * (MINUTES - 2)
    assert all(set(asked) == {"100", "101", "102"} for t, asked in host.squeues if t >= 40)
    for job in jobs:  # each still reports every 5 s, on a status at most 30 s old
        assert per_minute(heard[job.job_id or ""])[2:] == [12] * (MINUTES - 2)
        assert job.status is not None
        assert clock.now - job._status_at <= job_module.PENDING_POLL


async def test_a_running_job_is_asked_about_once_a_minute_for_the_walltime_notice(
    clock: VirtualTime, tmp_path: Path
) -> None:
    """Results and progress ask for notices every few seconds while cells run; the walltime
    left is asked of the scheduler once a minute."""
    host = CountingLoginNode(clock)
    backend = SlurmBackend(make_settings(tmp_path, walltime_warn="10"))
    job = a_job(host, tmp_path, "100", "RUNNING")
    # what a started backend holds (the bring-up itself is tested against a real SLURM)
    backend._job = job
    backend._endpoint = GatewayEndpoint("https://127.0.0.1:1", "t0k3n")
    notices: list[list[str]] = []

    async def a_busy_session() -> None:
        for _ in range(MINUTES * 60 // 5):
            notices.append(await backend.notices())
            await clock.sleep(5)

    await clock.run([a_busy_session()], until=MINUTES * 60)
    assert per_minute(host.times()) == [1] * MINUTES
    assert all(n and "reaches its walltime in about 4 min" in n[0] for n in notices)


async def test_a_slow_gateway_start_checks_the_job_once_a_minute_after_the_first(
    clock: VirtualTime, tmp_path: Path
) -> None:
    """The connection file is polled (cheap: a stat on the open SFTP channel); whether the job
    still runs is asked once a second for a minute, then once a minute."""
    host = CountingLoginNode(clock)
    job = a_job(host, tmp_path, "100", "RUNNING")

    async def waiting() -> None:
        with pytest.raises(BackendError, match="did not answer within 600 s"):
            await job.wait_gateway(_no_progress)

    tasks = await clock.run([waiting()], until=MINUTES * 60 + 10)
    assert tasks[0].exception() is None
    counts = per_minute(host.times())
    assert counts[0] >= 50
    assert counts[1:] == [1] * (MINUTES - 1)


async def test_the_gateway_is_found_without_extra_queries(
    clock: VirtualTime, tmp_path: Path
) -> None:
    host = CountingLoginNode(clock)
    job = a_job(host, tmp_path, "100", "RUNNING")
    info = {"host": "node1", "port": 5000, "token": "t0k3n-t0k3n", "started_at": 1.0}

    async def publish_later() -> None:
        await clock.sleep(1.5)
        host.files[f"{CONN_DIR}/jlabgw-100.json"] = json.dumps(info).encode()

    found: list[object] = []

    async def waiting() -> None:
        found.append(await job.wait_gateway(_no_progress))

    await clock.run([waiting(), publish_later()], until=60)
    assert found
    assert len(host.squeues) == 1  # the alive check after 1 s


async def _no_progress(done: float, total: float | None, message: str) -> None:
    return None
