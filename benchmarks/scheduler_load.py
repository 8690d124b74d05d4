"""Login-node load (issue 17): many servers' pending jobs against a real slurmctld.

A cluster has hundreds of users (batchspawner's 30 s polls overloaded a login node at 200+,
jupyterhub/batchspawner#292). This holds ``--servers`` jobs pending in the test SLURM
(``sbatch --hold``) and drives one :meth:`BatchJob.wait_running` per job in this process, as
that many servers would, in virtual time: the waits' clock and sleep are replaced, so
``--minutes`` of queue wait pass as fast as the real squeue calls run (every call is real:
a process, munge, slurmctld's RPCs). Each server has its own login-node "connection", so no
query is shared between servers; ``--jobs-per-server J`` gives each server J jobs (resource
shapes), which its queries then share.

Per simulated minute it reports the squeue calls per server and slurmctld's RPC counts from
``sdiag`` (reset before each schedule, read at every simulated minute), for the schedule before
issue 17 (0.1 s growing to 2 s, then 2 s for as long as the job pends) and the new one (the same
first minute, then 30 s).

Needs root and tests/cluster/setup-system.sh; starts and stops its own munged, slurmctld and
slurmd (tests/slurm.py). The default run takes about 2-3 minutes.

Usage: python benchmarks/scheduler_load.py [--servers 200] [--minutes 3] [--jobs-per-server 1]
                                           [--schedule both|old|new] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent  # for tests.slurm
sys.path.insert(0, str(REPO))

from jlabgw.cluster import job as job_module  # noqa: E402
from jlabgw.cluster.connection_file import JobFiles  # noqa: E402
from jlabgw.cluster.host import FileStat, Host, LocalHost  # noqa: E402
from jlabgw.cluster.job import BatchJob  # noqa: E402
from jlabgw.cluster.slurm.scheduler import SlurmScheduler  # noqa: E402
from jlabgw.cluster.ssh.connection import CommandResult  # noqa: E402
from jlabgw.config import load_settings  # noqa: E402

# the RPCs a status query costs slurmctld: the job info (one job, or the job table when several
# are asked for), the partitions and the federation squeue reads along with it
JOB_RPCS = (
    "REQUEST_JOB_INFO_SINGLE",
    "REQUEST_JOB_INFO",
    "REQUEST_PARTITION_INFO",
    "REQUEST_FED_INFO",
)
START = 10_000.0  # the virtual monotonic clock's start (arbitrary, as a real one's)


class VirtualTime:
    """A clock that moves only when every task run under it sleeps on it, to the earliest
    wake-up; ``on_minute`` runs at each minute boundary the clock is about to pass."""

    def __init__(self) -> None:
        self.now = START
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0

    @property
    def elapsed(self) -> float:
        return self.now - START

    async def sleep(self, seconds: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count += 1
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), self._count, wake))
        await wake

    async def run(
        self,
        coros: Sequence[Coroutine[Any, Any, Any]],
        minutes: int,
        on_minute: Callable[[int], None],
    ) -> None:
        tasks = [asyncio.create_task(coro) for coro in coros]
        minute = 0
        for _ in range(10_000_000):
            await self._settle(tasks)
            if all(t.done() for t in tasks):
                break
            wake = self._sleepers[0][0] - START
            while wake >= 60 * (minute + 1) and minute < minutes:
                minute += 1
                on_minute(minute)
            if minute >= minutes:
                break
            self.now = self._sleepers[0][0]
            while self._sleepers and self._sleepers[0][0] <= self.now:
                heapq.heappop(self._sleepers)[2].set_result(None)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failed = [r for r in results if r is not None and not isinstance(r, asyncio.CancelledError)]
        if failed:
            raise RuntimeError(f"{len(failed)} wait(s) failed, the first: {failed[0]!r}")

    async def _settle(self, tasks: list[asyncio.Task[Any]]) -> None:
        for _ in range(600_000):  # 10 minutes at most for one step's real squeue calls
            if len(self._sleepers) >= sum(not t.done() for t in tasks):
                return
            await asyncio.sleep(0.001)
        raise RuntimeError("a wait neither ended nor slept")


class ServerHost(Host):
    """One server's login node: this machine's commands, each squeue counted at its virtual
    minute. A Host of its own, so its jobs share queries with each other only."""

    def __init__(self, clock: VirtualTime, counts: list[int]) -> None:
        self.where = f"server {id(self):x}"
        self._local = LocalHost()
        self._clock = clock
        self._counts = counts

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = 60,
        check: bool = True,
    ) -> CommandResult:
        if "squeue" in argv:
            minute = int(self._clock.elapsed // 60)
            if minute < len(self._counts):
                self._counts[minute] += 1
        return self._local.run(argv, input=input, timeout=timeout, check=check)

    def read_bytes(self, path: str) -> bytes:
        return self._local.read_bytes(path)

    def write_bytes(self, path: str, data: bytes, mode: int = 0o600) -> None:
        self._local.write_bytes(path, data, mode)

    def stat(self, path: str) -> FileStat | None:
        return self._local.stat(path)

    def uid(self) -> int:
        return self._local.uid()


def sdiag() -> dict[str, tuple[int, int]]:
    """slurmctld's RPC statistics by message type: name -> (count, total µs)."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True, timeout=30).stdout
    section = out.split("Remote Procedure Call statistics by message type", 1)[-1]
    section = section.split("Remote Procedure Call statistics by user", 1)[0]
    found = {}
    for name, count, total in re.findall(
        r"^\s*(\w+)\s+\(\s*\d+\)\s+count:(\d+)\s+ave_time:\d+\s+total_time:(\d+)", section, re.M
    ):
        found[name] = (int(count), int(total))
    return found


def rpc_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, dict[str, int]]:
    delta = {}
    for name, (count, total) in after.items():
        if name == "REQUEST_STATS_INFO":
            continue  # sdiag itself
        b_count, b_total = before.get(name, (0, 0))
        if count > b_count:
            delta[name] = {"count": count - b_count, "total_us": total - b_total}
    return delta


def run_schedule(
    schedule: str, job_ids: list[str], servers: int, per_server: int, minutes: int, root: Path
) -> dict[str, Any]:
    """Every server's wait_running under ``schedule`` for ``minutes`` simulated minutes."""
    clock = VirtualTime()
    job_module._now = lambda: clock.now
    job_module._wall = lambda: 1_800_000_000.0 + clock.elapsed
    job_module._sleep = clock.sleep
    job_module.PENDING_POLL = POLL_NEW if schedule == "new" else job_module.POLL_MAX
    settings = load_settings(
        environ={
            "JLABGW_CONFIG": str(root / "empty.toml"),
            "JLABGW_STATE_DIR": str(root / "state"),
            "JLABGW_NOTEBOOK_DIR": str(root / "notebooks"),
            "JLABGW_QUEUE_TIMEOUT": str(minutes * 60 + 600),
        }
    )
    counts = [[0] * minutes for _ in range(servers)]
    jobs = []
    for n in range(servers):
        host = ServerHost(clock, counts[n])
        scheduler = SlurmScheduler(host)
        for k in range(per_server):
            job = BatchJob(scheduler, settings, JobFiles(str(root)), root / f"s{n}-{k}.json")
            job.job_id = job_ids[n * per_server + k]
            jobs.append(job)
    snapshots: list[dict[str, tuple[int, int]]] = []

    async def no_progress(done: float, total: float | None, message: str) -> None:
        return None

    async def drive() -> None:
        await clock.run(
            [job.wait_running(no_progress) for job in jobs],
            minutes,
            lambda minute: snapshots.append(sdiag()),
        )

    t0 = time.monotonic()
    subprocess.run(["sdiag", "-r"], check=True, capture_output=True, timeout=30)
    snapshots = [sdiag()]
    asyncio.run(drive())
    real = time.monotonic() - t0
    for job in jobs:
        job.close()
    per_minute = []
    for minute in range(minutes):
        squeues = [c[minute] for c in counts]
        rpcs = rpc_delta(snapshots[minute], snapshots[minute + 1])
        per_minute.append(
            {
                "minute": minute + 1,
                "squeue_total": sum(squeues),
                "squeue_per_server_max": max(squeues),
                "squeue_per_server_mean": round(sum(squeues) / servers, 2),
                "rpcs": rpcs,
                "job_rpcs": sum(v["count"] for k, v in rpcs.items() if k in JOB_RPCS),
                "job_rpc_ms": round(
                    sum(v["total_us"] for k, v in rpcs.items() if k in JOB_RPCS) / 1000, 1
                ),
            }
        )
    return {"schedule": schedule, "real_seconds": round(real, 1), "minutes": per_minute}


POLL_NEW = job_module.PENDING_POLL


HELD = ["sbatch", "--parsable", "--hold", "-o", "/dev/null"]


def submit_held(count: int, root: Path) -> list[str]:
    ids = []
    for n in range(count):
        done = subprocess.run(
            [*HELD, "-J", f"load{n}", "--wrap", "sleep 1"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            cwd=root,
        )
        ids.append(done.stdout.strip().split(";")[0])
    return ids


def report(results: list[dict[str, Any]], servers: int, per_server: int) -> None:
    print(
        f"\n{servers} servers x {per_server} pending job(s) each, squeue per simulated minute "
        "and slurmctld's job-query RPCs (REQUEST_JOB_INFO[_SINGLE], _PARTITION_INFO, "
        "_FED_INFO) from sdiag:\n"
    )
    print(
        "| schedule | minute | squeue, all servers | per server (max) | job-query RPCs "
        "| of which REQUEST_JOB_INFO_SINGLE / REQUEST_JOB_INFO | slurmctld ms |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for result in results:
        for row in result["minutes"]:
            single = row["rpcs"].get("REQUEST_JOB_INFO_SINGLE", {}).get("count", 0)
            table = row["rpcs"].get("REQUEST_JOB_INFO", {}).get("count", 0)
            print(
                f"| {result['schedule']} | {row['minute']} | {row['squeue_total']} "
                f"| {row['squeue_per_server_max']} | {row['job_rpcs']} | {single} / {table} "
                f"| {row['job_rpc_ms']} |"
            )
    for result in results:
        print(f"{result['schedule']}: {result['real_seconds']} s of real time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--minutes", type=int, default=3, help="simulated minutes of waiting")
    parser.add_argument("--jobs-per-server", type=int, default=1)
    parser.add_argument("--schedule", choices=["both", "old", "new"], default="both")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    args = parser.parse_args()
    from tests.slurm import SlurmCluster, unavailable_reason

    why = unavailable_reason()
    if why:
        sys.exit(f"cannot run: {why}")
    with tempfile.TemporaryDirectory(prefix="jlabgw-load-") as tmp:
        root = Path(tmp)
        (root / "empty.toml").touch()
        cluster = SlurmCluster(root / "slurm")
        cluster.setup()
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            count = args.servers * args.jobs_per_server
            t0 = time.monotonic()
            job_ids = submit_held(count, root)
            print(f"{count} held jobs submitted in {time.monotonic() - t0:.1f} s", flush=True)
            schedules = ["old", "new"] if args.schedule == "both" else [args.schedule]
            results = []
            for schedule in schedules:
                print(f"running the {schedule} schedule ...", flush=True)
                results.append(
                    run_schedule(
                        schedule,
                        job_ids,
                        args.servers,
                        args.jobs_per_server,
                        args.minutes,
                        root,
                    )
                )
            subprocess.run(["scancel", *job_ids], check=False, timeout=60, capture_output=True)
        finally:
            cluster.stop()
    report(results, args.servers, args.jobs_per_server)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
